"""`chammi embed` + `chammi eval` end to end: features row-aligned with the manifest, results files
written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from chammi_cli import main as chammi
from chammi_data.format.manifest import read_manifest, source_rows
from chammi_data.format.vocab import SOURCES
from chammi_models.embed import extract_features, load_trained
from chammi_models.training.config import load_config
from chammi_models.training.train import train


@pytest.fixture
def trained_run(tiny_release: Path, tmp_path: Path) -> Path:
    cfg = load_config(
        "tiny_cpu",
        [
            "optim.max_steps=2",
            "data.batch_size=8",
            "data.image_size=32",
            "data.workers=0",
            "run.eval_at_end=true",
        ],
    )
    result = train(cfg, tiny_release, tmp_path / "run")
    assert result.scores is not None and result.scores["cps"] is not None  # evaluated at the end
    return tmp_path / "run"


@pytest.mark.slow
def test_embed_then_eval(trained_run: Path, tiny_release: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "features"
    assert (
        chammi(
            [
                "embed",
                "--checkpoint",
                str(trained_run),
                "--release",
                str(tiny_release),
                "--out",
                str(out),
                "--batch-size",
                "7",
                "--workers",
                "0",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    manifest = read_manifest(tiny_release)
    info = json.loads((out / "embedding.json").read_text())
    assert info["model"]["name"] == "depthwise" and info["image_size"] == 32
    model, card = load_trained(trained_run)
    direct = extract_features(model, tiny_release, image_size=32, batch_size=64, progress=False)
    for key, src in SOURCES.items():
        arr = np.load(out / src.folder / "features.npy")
        assert arr.shape == (len(source_rows(manifest, key)), model.num_features)
        assert info["rows"][src.folder] == arr.shape[0]
        # batch size does not change the rows (and row order is the manifest's)
        np.testing.assert_allclose(arr, direct[key], rtol=1e-4, atol=1e-5)
    assert card["class_lists"]["wtc11"][0] == "M0"

    scores = tmp_path / "scores"
    assert chammi(["eval", "--features", str(out), "--release", str(tiny_release), "--out", str(scores)]) == 0
    assert (scores / "results.csv").is_file() and (scores / "results.json").is_file()
    assert "CPS=" in capsys.readouterr().out


def test_embed_without_model_explains(tmp_path: Path, tiny_release: Path) -> None:
    with pytest.raises(FileNotFoundError, match="run `chammi train` first"):
        load_trained(tmp_path / "nothing")


def test_embed_normalises_with_the_card_stats(tiny_release: Path, tmp_path: Path) -> None:
    from chammi_models.embed import embed
    from chammi_models.zoo.weights import save_model
    from tests.chammi_models.zoo_helpers import SIZE, small_model

    torch.manual_seed(0)
    vocab_stats = {key: info.stats() for key, info in SOURCES.items()}
    shifted = {
        key: {c: (m + 0.2, s * 2.0) for c, (m, s) in stats.items()} for key, stats in vocab_stats.items()
    }
    model = small_model("slice_param", num_classes=0)
    cards = {"vocab": {"normalisation": vocab_stats}, "none": {}, "shifted": {"normalisation": shifted}}
    feats = {}
    for name, fields in cards.items():
        save_model(model, tmp_path / name, {"img_size": SIZE, **fields})
        out = embed(
            tmp_path / name,
            tiny_release,
            tmp_path / f"features_{name}",
            batch_size=64,
            workers=0,
            device="cpu",
        )
        info = json.loads((out / "embedding.json").read_text())
        assert info["image_size"] == SIZE
        assert info["normalisation"] == ("vocabulary" if name == "none" else "card")
        feats[name] = np.load(out / "HPA" / "features.npy")
    np.testing.assert_array_equal(feats["vocab"], feats["none"])  # no stats in the card: the vocabulary's
    assert np.abs(feats["shifted"] - feats["vocab"]).max() > 1e-3  # the card's stats are the ones used


def test_embed_refuses_malformed_card_stats(tiny_release: Path, tmp_path: Path) -> None:
    from chammi_models.embed import embed
    from chammi_models.zoo.weights import save_model
    from tests.chammi_models.zoo_helpers import small_model

    save_model(
        small_model("slice_param", num_classes=0), tmp_path / "m", {"normalisation": {"hpa": [[0.1], [0.2]]}}
    )
    with pytest.raises(ValueError, match=r"normalisation\['hpa'\]"):
        embed(tmp_path / "m", tiny_release, tmp_path / "out", workers=0, device="cpu")


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("chammi embed: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_embed_cli_answers_user_errors_in_one_line(tiny_release: Path, tmp_path: Path, capsys) -> None:
    from chammi_models.zoo.weights import save_model
    from tests.chammi_models.zoo_helpers import small_model

    def run(checkpoint: Path, release: Path) -> int:
        return chammi(
            [
                "embed",
                "--checkpoint",
                str(checkpoint),
                "--release",
                str(release),
                "--out",
                str(tmp_path / "out"),
                "--workers",
                "0",
                "--device",
                "cpu",
            ]
        )

    assert run(tmp_path / "no-such-run", tiny_release) == 2
    assert "run `chammi train` first" in _one_line_error(capsys)
    folder = tmp_path / "weights"
    save_model(small_model("slice_param", num_classes=0), folder)
    assert run(folder, tmp_path / "no-such-release") == 2
    assert "not a release folder" in _one_line_error(capsys)
    card = json.loads((folder / "card.json").read_text())
    (folder / "card.json").write_text(json.dumps({**card, "channels": card["channels"][::-1]}))
    assert run(folder, tiny_release) == 2  # refused weights are bad input, answered like any other
    assert "field 'channels'" in _one_line_error(capsys)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_eval_refuses_features_from_another_release_or_with_permuted_rows(
    tiny_release: Path, tmp_path: Path, cell_factory, capsys
) -> None:
    """Features carry embedding.json; scoring them against another release of the same size, or after their
    rows were permuted, is an error (exit 2, one line) unless --force."""
    from chammi_data.format.writer import ReleaseWriter
    from chammi_models.zoo.weights import save_model
    from tests.chammi_models.zoo_helpers import small_model

    folder = tmp_path / "weights"
    save_model(small_model("slice_param", num_classes=0), folder)
    feats = tmp_path / "features"
    assert (
        chammi(
            [
                "embed",
                "--checkpoint",
                str(folder),
                "--release",
                str(tiny_release),
                "--out",
                str(feats),
                "--workers",
                "0",
                "--device",
                "cpu",
                "--image-size",
                "32",
            ]
        )
        == 0
    )
    other = tmp_path / "other"
    writer = ReleaseWriter(other, cells_per_shard=10, progress=False)
    for source in SOURCES:  # the same sources and row counts, other cells
        writer.add_source(source, cell_factory(source, 24, seed=99))
    writer.close()
    capsys.readouterr()

    def score(release: Path, *extra: str) -> int:
        return chammi(
            [
                "eval",
                "--features",
                str(feats),
                "--release",
                str(release),
                "--out",
                str(tmp_path / "s"),
                *extra,
            ]
        )

    assert score(tiny_release) == 0
    assert score(other) == 2
    # after the progress lines of the first, scored run
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("chammi eval: error:") and "not from the release being scored" in err
    hpa = feats / "HPA" / "features.npy"
    arr = np.load(hpa)
    np.save(hpa, arr[::-1].copy())  # rows permuted after embedding
    assert score(tiny_release) == 2
    assert "changed since chammi embed wrote it" in capsys.readouterr().err
    assert score(tiny_release, "--force") == 0
    out = capsys.readouterr()
    assert "warning:" in out.err and "CPS=" in out.out
    assert json.loads((tmp_path / "s" / "results.json").read_text())["provenance"]["identity_warnings"]
