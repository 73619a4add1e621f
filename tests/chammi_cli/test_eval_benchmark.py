"""``chammi eval --benchmark NAME`` and ``chammi report`` on the benchmarks' sample data, end to end through
the command line: build -> embed with a tiny untrained model -> score -> results; planted beats shuffled on
the real path; features checked for row alignment; bad input is one line and exit 2."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import chammi_cli
from chammi_data.evaluation.benchmarks import list_benchmarks
from chammi_data.format.manifest import read_release_json
from chammi_models.benchmark_embed import embed_release, resolve_model, run_benchmark
from tests.benchmark_data import SOURCES, TINY_MODEL, embedded, release


def _one_line_error(capsys: pytest.CaptureFixture, *argv: str) -> str:
    assert chammi_cli.main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("chammi eval: error: "), err
    return err


def test_help_lists_every_benchmark(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        chammi_cli.main(["eval", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "{" + ",".join(list_benchmarks()) + "}" in out
    assert list_benchmarks() == ["chammi", "rbc-mc", "idr0017", "cellphie", "jumpcp", "hpav23"]


@pytest.mark.slow  # builds or embeds a benchmark's sample (once per session)
@pytest.mark.parametrize("name", list(SOURCES))
def test_each_benchmark_end_to_end(name: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    out = embedded(name, tmp_path_factory)
    result = json.loads((out / "results.json").read_text())
    assert result["benchmark"] == name and 0 <= result["headline"]["value"] <= 1
    assert (out / f"{name}.png").stat().st_size > 0
    assert {"benchmark", "table", "group", "metric", "value"} == set(pd.read_csv(out / "results.csv").columns)
    info = json.loads((out / "features" / "embedding.json").read_text())
    rel = release(name, tmp_path_factory)
    assert info["manifest_sha256"] == read_release_json(rel)["manifest_sha256"]  # from the scored release
    assert result["provenance"]["release"]["manifest_sha256"] == info["manifest_sha256"]
    feats = np.load(out / "features" / "features.npy")
    manifest = pd.read_parquet(rel / "manifest.parquet")
    assert len(feats) == len(manifest) and np.isfinite(feats).all()
    width = 32 * len(info["channels"]) if info["bag_of_channels"] else 32
    assert feats.shape[1] == width and info["bag_of_channels"] == (name == "cellphie")
    if name == "cellphie":  # bag-of-channels features are scored with one PCA per channel, as published
        assert result["options"]["channel_slices"] == 14


def _shuffled(features: Path, out: Path, seed: int = 3) -> Path:
    """The features with their rows permuted against the release (ids kept in release order)."""
    out.mkdir(parents=True)
    x = np.load(features / "features.npy")
    np.save(out / "features.npy", x[np.random.default_rng(seed).permutation(len(x))])
    shutil.copy(features / "cell_ids.txt", out / "cell_ids.txt")
    return out


@pytest.mark.slow  # builds or embeds a benchmark's sample (once per session)
@pytest.mark.parametrize(("name", "margin"), [("rbc-mc", 0.4), ("idr0017", 0.3), ("hpav23", 0.15)])
def test_planted_beats_shuffled_on_the_real_path(
    name: str, margin: float, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    out = embedded(name, tmp_path_factory)
    planted = json.loads((out / "results.json").read_text())["headline"]["value"]
    options = json.loads((out / "results.json").read_text())["options"]
    opts = {"seeds": options["seeds"], "epochs": options["epochs"]} if name == "hpav23" else {}
    shuffled = _shuffled(out / "features", tmp_path / "shuffled")
    result, _ = run_benchmark(
        name, release(name, tmp_path_factory), tmp_path / "s", features=shuffled, options=opts
    )
    assert planted > result.value + margin, (planted, result.value)


@pytest.mark.slow  # builds or embeds a benchmark's sample (once per session)
def test_rerun_gives_identical_numbers(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    first = embedded("rbc-mc", tmp_path_factory)
    argv = ["eval", "--benchmark", "rbc-mc", "--release", str(release("rbc-mc", tmp_path_factory))]
    assert chammi_cli.main([*argv, "--out", str(tmp_path / "again"), *TINY_MODEL]) == 0
    a, b = (
        np.load(first / "features" / "features.npy"),
        np.load(tmp_path / "again" / "features" / "features.npy"),
    )
    np.testing.assert_array_equal(a, b)  # the untrained model is seeded
    assert (first / "results.csv").read_text() == (tmp_path / "again" / "results.csv").read_text()


@pytest.mark.slow  # builds or embeds a benchmark's sample (once per session)
def test_bag_of_channels_concatenates_single_channel_embeddings(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    rel = release("hpav23", tmp_path_factory)
    opts = {"embed_dim": 16, "depth": 1, "num_heads": 2, "img_size": 32}
    model, _card, _how = resolve_model("channel_vit", opts, seed=0)
    bag, ids, names = embed_release(model, rel, "hpav23", bag_of_channels=True, image_size=32, progress=False)
    whole, _, _ = embed_release(model, rel, "hpav23", image_size=32, progress=False, batch_size=7)
    assert bag.shape == (len(ids), 16 * 4) and whole.shape == (len(ids), 16)
    from chammi_data.evaluation.benchmarks.release_table import release_rows
    from chammi_data.loading.dataset import ReleaseDataset
    from chammi_data.store.storage import open_store
    from chammi_models.benchmark_embed import benchmark_transform

    store = open_store(rel)
    ds = ReleaseDataset(store, release_rows(store, "hpav23"), transform=benchmark_transform("hpav23", 32))
    with torch.no_grad():
        image = ds[3]["image"][None]
        for k, channel in enumerate(names):  # slice k is channel k alone, named by its type
            np.testing.assert_allclose(
                bag[3, 16 * k : 16 * (k + 1)], model(image[:, k : k + 1], (channel,))[0], atol=1e-5
            )
        np.testing.assert_allclose(whole[3], model(image, names)[0], atol=1e-5)


@pytest.mark.slow  # builds or embeds a benchmark's sample (once per session)
def test_precomputed_features_are_checked_for_row_alignment(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture
) -> None:
    out, rel = embedded("rbc-mc", tmp_path_factory), release("rbc-mc", tmp_path_factory)
    planted = json.loads((out / "results.json").read_text())["headline"]["value"]
    x = np.load(out / "features" / "features.npy")
    ids = (out / "features" / "cell_ids.txt").read_text().split()
    base = ["eval", "--benchmark", "rbc-mc", "--release", str(rel)]
    # rows in another order, with their ids: matched back by id, same score
    order = np.random.default_rng(0).permutation(len(x))
    moved = tmp_path / "moved"
    moved.mkdir()
    np.save(moved / "features.npy", x[order])
    (moved / "cell_ids.txt").write_text("".join(f"{ids[i]}\n" for i in order))
    assert chammi_cli.main([*base, "--features", str(moved), "--out", str(tmp_path / "m")]) == 0
    assert json.loads((tmp_path / "m" / "results.json").read_text())["headline"]["value"] == planted
    # a release row without features / features of the wrong length / an id of no release row
    (moved / "cell_ids.txt").write_text(
        "".join(f"{ids[i]}\n" for i in order[:-1]) + "rbc_mc-0000000000000000\n"
    )
    err = _one_line_error(capsys, *base, "--features", str(moved), "--out", str(tmp_path / "x"))
    assert "1 release row(s) have no features" in err
    np.save(tmp_path / "short.npy", x[:-1])
    err = _one_line_error(
        capsys, *base, "--features", str(tmp_path / "short.npy"), "--out", str(tmp_path / "x")
    )
    assert f"features have {len(x) - 1} rows but the table has {len(x)}" in err
    # features embedded from another release, or edited since: refused unless --force
    other = tmp_path / "other"
    shutil.copytree(out / "features", other)
    info = json.loads((other / "embedding.json").read_text())
    (other / "embedding.json").write_text(json.dumps({**info, "manifest_sha256": "0" * 64}))
    err = _one_line_error(capsys, *base, "--features", str(other), "--out", str(tmp_path / "x"))
    assert "not from the release being scored" in err and "--force" in err
    assert chammi_cli.main([*base, "--features", str(other), "--out", str(tmp_path / "f"), "--force"]) == 0
    assert "scored anyway: --force" in capsys.readouterr().err
    np.save(other / "features.npy", x[::-1].copy())
    err = _one_line_error(capsys, *base, "--features", str(other), "--out", str(tmp_path / "x"))
    assert "features.npy: changed since it was written" in err


@pytest.mark.slow  # builds or embeds a benchmark's sample (once per session)
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture
) -> None:
    rbc, jump = release("rbc-mc", tmp_path_factory), release("jumpcp", tmp_path_factory)
    n_jump = len(pd.read_parquet(jump / "manifest.parquet"))
    nan = np.random.default_rng(0).normal(size=(n_jump, 8))
    nan[5, 2] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    cases = [
        (
            ["--benchmark", "jumpcp", "--release", str(jump), "--features", str(tmp_path / "nan.npy")],
            "NaN or inf values in 1 row(s): 5",
        ),
        (
            ["--benchmark", "jumpcp", "--release", str(rbc), "--features", str(tmp_path / "nan.npy")],
            "holds no jumpcp rows",
        ),
        (["--benchmark", "rbc-mc", "--release", str(rbc)], "exactly one of --features"),
        (
            ["--benchmark", "rbc-mc", "--release", str(rbc), "--checkpoint", "no_such_model"],
            "not a zoo model",
        ),
        (
            [
                "--benchmark",
                "jumpcp",
                "--release",
                str(jump),
                "--features",
                str(tmp_path / "nan.npy"),
                "--option",
                "nul_size=5",
            ],
            "unknown option(s) nul_size",
        ),
    ]
    for argv, expect in cases:
        assert expect in _one_line_error(capsys, "eval", *argv, "--out", str(tmp_path / "o"))


@pytest.mark.slow  # builds or embeds a benchmark's sample (once per session)
def test_missing_class_and_unknown_plate_reach_the_user_as_one_line(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture
) -> None:
    import chammi_cli.build as build_cli
    from tests.benchmark_data import raw

    rbc = tmp_path / "rbc"
    shutil.copytree(raw("rbc-mc", tmp_path_factory), rbc)
    shutil.rmtree(rbc / "Swiss" / "Side")  # a class missing at one site
    jump = tmp_path / "jump"  # a plate that experiment-metadata.tsv does not know
    src = raw("jumpcp", tmp_path_factory) / "BR00117010"
    shutil.copytree(src, jump / "BR99999999")
    table = (src / "sc-metadata.csv").read_text().replace("BR00117010/", "BR99999999/")
    (jump / "BR99999999" / "sc-metadata.csv").write_text(table)
    for name, folder, extra, expect in (
        ("rbc_mc", rbc, [], "site Swiss has no sample of class(es) Side"),
        (
            "jumpcp",
            jump,
            ["--set", "jumpcp.plates=[BR99999999]"],
            "plate BR99999999 is not in experiment-metadata.tsv",
        ),
    ):
        out = tmp_path / f"{name}-release"
        assert (
            build_cli.main(
                [
                    "--source",
                    name,
                    "--input",
                    str(folder),
                    "--output",
                    str(out),
                    "--workers",
                    "1",
                    "--quiet",
                    *extra,
                ]
            )
            == 0
        )
        bench = {"rbc_mc": "rbc-mc", "jumpcp": "jumpcp"}[name]
        n = len(pd.read_parquet(out / "manifest.parquet"))
        np.save(tmp_path / f"{name}.npy", np.random.default_rng(1).normal(size=(n, 8)))
        argv = [
            "eval",
            "--benchmark",
            bench,
            "--release",
            str(out),
            "--features",
            str(tmp_path / f"{name}.npy"),
        ]
        assert expect in _one_line_error(capsys, *argv, "--out", str(tmp_path / "o"))


@pytest.mark.slow  # builds or embeds a benchmark's sample (once per session)
def test_report_shows_the_suite_side_by_side(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture
) -> None:
    model = tmp_path / "tiny"
    for name in ("rbc-mc", "idr0017", "jumpcp"):
        shutil.copytree(
            embedded(name, tmp_path_factory), model / name, ignore=shutil.ignore_patterns("features")
        )
    other = embedded("rbc-mc", tmp_path_factory)  # a second model scored on one benchmark only
    assert (
        chammi_cli.main(
            ["report", str(model), str(other), "--names", "tiny", "other", "--out", str(tmp_path / "r")]
        )
        == 0
    )
    table = pd.read_csv(tmp_path / "r" / "suite.csv")
    assert list(table.columns) == ["model", "rbc-mc", "idr0017", "jumpcp"] and list(table["model"]) == [
        "tiny",
        "other",
    ]
    assert math.isnan(table.loc[1, "idr0017"]) and table.loc[0, "rbc-mc"] == table.loc[1, "rbc-mc"]
    assert "| other | " in (tmp_path / "r" / "suite.md").read_text() and "n/a" in capsys.readouterr().out
    assert (tmp_path / "r" / "suite_radar.png").stat().st_size > 0


def test_the_chammi_benchmark_scores_as_chammi_eval(tiny_release: Path, tmp_path: Path) -> None:
    from chammi_data.evaluation.features import save_features
    from chammi_data.format.manifest import read_manifest

    manifest = read_manifest(tiny_release)
    rng = np.random.default_rng(0)
    feats = {s: rng.normal(size=(int((manifest["source"] == s).sum()), 6)) for s in ("wtc11", "hpa", "cp")}
    save_features(tmp_path / "f", feats, "features")
    base = ["eval", "--release", str(tiny_release), "--features", str(tmp_path / "f")]
    assert chammi_cli.main([*base, "--out", str(tmp_path / "plain")]) == 0
    assert chammi_cli.main([*base, "--benchmark", "chammi", "--out", str(tmp_path / "suite")]) == 0
    plain = json.loads((tmp_path / "plain" / "results.json").read_text())
    suite = json.loads((tmp_path / "suite" / "results.json").read_text())
    assert suite["benchmark"] == "chammi" and suite["options"]["metric"] == plain["metric"] == "cosine"
    for row in plain["table"]:
        assert suite["metrics"][f"{row['dataset']}_{row['task']}_f1"] == row["f1_score_macro"]
    assert (plain["cps"] is None and suite["headline"]["value"] is None) or suite["headline"][
        "value"
    ] == plain["cps"]


@pytest.mark.slow  # builds or embeds a benchmark's sample (once per session)
def test_a_weights_folder_embeds_any_benchmark(
    tiny_release: Path,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    capsys: pytest.CaptureFixture,
) -> None:
    from chammi_models import create_model
    from chammi_models.zoo.weights import save_model

    opts = {"embed_dim": 16, "depth": 1, "num_heads": 2, "img_size": 32}
    for vocab in ("all", "chammi"):
        model = create_model("channel_vit", channels=vocab, num_classes=0, **opts)
        save_model(model, tmp_path / vocab, {"img_size": 32})
    rbc = ["eval", "--benchmark", "rbc-mc", "--release", str(release("rbc-mc", tmp_path_factory))]
    assert (
        chammi_cli.main(
            [*rbc, "--checkpoint", str(tmp_path / "all"), "--out", str(tmp_path / "r"), "--quiet"]
        )
        == 0
    )
    assert "weights" in json.loads((tmp_path / "r" / "features" / "embedding.json").read_text())["model"]
    chammi = [
        "eval",
        "--benchmark",
        "chammi",
        "--release",
        str(tiny_release),
        "--checkpoint",
        str(tmp_path / "all"),
    ]
    assert chammi_cli.main([*chammi, "--out", str(tmp_path / "c")]) == 0
    assert json.loads((tmp_path / "c" / "results.json").read_text())["benchmark"] == "chammi"
    capsys.readouterr()
    # a model trained on CHAMMI's eight names has no bright-field weights: one line naming the channel
    err = _one_line_error(
        capsys, *rbc, "--checkpoint", str(tmp_path / "chammi"), "--out", str(tmp_path / "x")
    )
    assert "['bright-field'] are not in this model's vocabulary" in err
