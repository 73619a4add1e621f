"""`chammi eval` / `chammi report` end to end on a tiny official layout and on the tiny release; feature
files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import chammi_cli.evaluate as eval_cli
import chammi_cli.report as report_cli
from chammi_data import evaluate
from chammi_data.evaluation.features import EvaluationInputError, load_features, save_features
from chammi_data.format.manifest import read_manifest, source_rows
from chammi_data.format.vocab import SOURCES


def run_cli(module, argv: list[str]) -> int:
    """Run the subcommand that ``module`` implements through the ``chammi`` dispatcher, as a user would."""
    from chammi_cli import SUBCOMMANDS, main

    name = next(n for n, (m, _) in SUBCOMMANDS.items() if m == module.__name__)
    return main([name, *argv])


def write_official(
    root: Path, seed: int = 0, n_train: int = 40, n_task: int = 20, dim: int = 6
) -> dict[str, np.ndarray]:
    """A tiny official root (Allen|HPA|CP/enriched_meta.csv) and matching features {folder: (N, dim)}."""
    rng = np.random.default_rng(seed)
    feats = {}
    for info in SOURCES.values():
        splits = ["Train"] * n_train + [t for t in info.tasks for _ in range(n_task)]
        labels = rng.choice(["x", "y", "z"], len(splits))
        df = pd.DataFrame(
            {"file_path": [f"{info.folder}/{i}.png" for i in range(len(splits))], "Label": labels}
        )
        df["channel_width"] = 8
        df["train_test_split"] = splits
        for t in info.tasks:
            df[t] = df["train_test_split"] == t
        df[info.group_column] = rng.choice([101, 102, 103], len(splits))  # numeric groups, as CP plates are
        (root / info.folder).mkdir(parents=True)
        df.to_csv(root / info.folder / "enriched_meta.csv", index=False)
        centres = {lab: rng.normal(size=dim) for lab in "xyz"}
        feats[info.folder] = (
            np.stack([centres[v] for v in labels]) + rng.normal(size=(len(labels), dim))
        ).astype(np.float32)
    return feats


@pytest.mark.slow
def test_eval_and_report_on_official_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    official = tmp_path / "official"
    feats = write_official(official)
    save_features(tmp_path / "feats", feats, "modelA")
    argv = ["--features", str(tmp_path / "feats"), "--release", str(official)]
    assert run_cli(eval_cli, [*argv, "--out", str(tmp_path / "runA")]) == 0
    assert "metric=cosine" in capsys.readouterr().out
    csv = pd.read_csv(tmp_path / "runA" / "results.csv")
    assert list(csv.columns) == ["dataset", "task", "classifier", "accuracy", "f1_score_macro"]
    assert csv["dataset"].tolist() == ["Allen"] * 2 + ["HPA"] * 3 + ["CP"] * 4
    data = json.loads((tmp_path / "runA" / "results.json").read_text())
    assert data["metric"] == "cosine" and data["classifier"] == "knn" and 0 <= data["cps"] <= 1
    assert set(data["provenance"]["metadata_sha256"]) == {"Allen", "HPA", "CP"}
    assert {(g["dataset"], g["group"]) for g in data["per_group"]} >= {("HPA", "101"), ("CP", "103")}
    expected = evaluate(feats, official, progress=False)
    assert data["cps"] == pytest.approx(expected.cps)
    assert (tmp_path / "runA" / "radar.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    noisy = {
        k: v + np.random.default_rng(1).normal(size=v.shape).astype(np.float32) for k, v in feats.items()
    }
    save_features(tmp_path / "feats", noisy, "modelB")
    argv = ["--features", str(tmp_path / "feats"), "--feature-file", "modelB", "--release", str(official)]
    assert run_cli(eval_cli, [*argv, "--metric", "l2", "--out", str(tmp_path / "runB")]) == 0
    capsys.readouterr()
    runs = [str(tmp_path / "runA"), str(tmp_path / "runB")]
    assert run_cli(report_cli, [*runs, "--names", "A", "B", "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| A | knn | cosine |" in md and "| B | knn | l2 |" in md
    assert f"**{expected.cps:.3f}**" in md and "different metrics" in md
    assert (tmp_path / "rep" / "radar.png").stat().st_size > 1000
    capsys.readouterr()
    assert run_cli(report_cli, [str(tmp_path / "nothing"), "--out", str(tmp_path / "rep2")]) == 2
    assert "run `chammi eval" in capsys.readouterr().err


def test_eval_on_our_release(tiny_release: Path, tmp_path: Path) -> None:
    manifest = read_manifest(tiny_release)
    rng = np.random.default_rng(0)
    feats = {k: rng.normal(size=(len(source_rows(manifest, k)), 5)).astype(np.float32) for k in SOURCES}
    save_features(tmp_path / "feats", feats, "embed")
    argv = ["--features", str(tmp_path / "feats"), "--release", str(tiny_release)]
    assert run_cli(eval_cli, [*argv, "--out", str(tmp_path / "run")]) == 0
    data = json.loads((tmp_path / "run" / "results.json").read_text())
    release = json.loads((tiny_release / "release.json").read_text())
    assert data["provenance"]["manifest_sha256"] == release["manifest_sha256"] and data["cps"] is not None
    # Features in our keys are the same as in folder names; a wrong row count is caught.
    direct = evaluate(feats, manifest, progress=False)
    assert data["cps"] == pytest.approx(direct.cps)
    with pytest.raises(EvaluationInputError, match="source cp"):
        evaluate({**feats, "cp": feats["cp"][1:]}, tiny_release, progress=False)


def test_load_features_layouts(tmp_path: Path) -> None:
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    (tmp_path / "f" / "hpa").mkdir(parents=True)
    np.save(tmp_path / "f" / "hpa" / "one.npy", x)
    (tmp_path / "f" / "notes").mkdir()
    got = load_features(tmp_path / "f")
    assert list(got) == ["hpa"] and np.array_equal(got["hpa"], x)
    np.save(tmp_path / "f" / "hpa" / "two.npy", x + 1)
    with pytest.raises(
        EvaluationInputError, match=r"several feature files \['one.npy', 'two.npy'\].*--feature-file"
    ):
        load_features(tmp_path / "f")
    assert np.array_equal(load_features(tmp_path / "f", "two")["hpa"], x + 1)
    with pytest.raises(FileNotFoundError, match="three.npy not found"):
        load_features(tmp_path / "f", "three.npy")
    (tmp_path / "f" / "HPA").mkdir()
    np.save(tmp_path / "f" / "HPA" / "one.npy", x)
    with pytest.raises(EvaluationInputError, match="found twice"):
        load_features(tmp_path / "f", "one")
    with pytest.raises(FileNotFoundError, match="no source folder"):
        load_features(tmp_path / "f" / "notes")
    paths = save_features(tmp_path / "g", {"wtc11": x, "CP": x[:2]}, "m.npy")
    assert paths["wtc11"] == tmp_path / "g" / "Allen" / "m.npy" and paths["cp"].parent.name == "CP"
