"""The CHAMMI-75 benchmark adapters: each published test layout -> a release whose rows carry the scorer's
columns, exact pixels, every skip named, the accounting balanced; from a folder and from an S3 server."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

import chammi_cli.build as build_cli
from chammi_data import load
from chammi_data.evaluation.benchmarks import get_benchmark
from chammi_data.format.validate import validate_release
from tests.benchmark_data import SOURCES, raw, release
from tests.servers import S3Server


def _report(root: Path) -> dict:
    return json.loads((root / "build_report.json").read_text())


def _reasons(root: Path) -> list[str]:
    return [s["reason"] for s in _report(root)["skipped"]]


@pytest.mark.slow  # builds or embeds a benchmark's sample (once per session)
@pytest.mark.parametrize("name", list(SOURCES))
def test_release_rows_carry_the_scorer_columns(name: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    root = release(name, tmp_path_factory)
    assert validate_release(root).ok  # shards, zarr image groups and manifest agree
    manifest = pd.read_parquet(root / "manifest.parquet")
    assert set(manifest["source"]) == {SOURCES[name]} and set(manifest["train_test_split"]) == {"Validation"}
    meta = pd.DataFrame([json.loads(m) for m in manifest["meta"]])
    assert set(get_benchmark(name).columns) <= set(meta.columns)
    for kind, tally in _report(root)["accounting"][SOURCES[name]]["kinds"].items():
        assert tally["in"] == tally["used"] + tally["skipped"], kind
    assert all(s["file"] and s["reason"] for s in _report(root)["skipped"])  # every skip names its file


@pytest.mark.slow  # builds or embeds a benchmark's sample (once per session)
def test_rbc_mc_keeps_exact_pixels_site_and_class(tmp_path_factory: pytest.TempPathFactory) -> None:
    src, root = raw("rbc-mc", tmp_path_factory), release("rbc-mc", tmp_path_factory)
    ds = load("all", root=root)
    for i in range(0, len(ds), 17):
        meta = ds[i]["meta"]
        path = src / meta["file"]
        assert meta["site"] == meta["file"].split("/")[0] and meta["label"] == path.parent.name
        np.testing.assert_array_equal(ds.read_array(i)[0], tifffile.imread(path))  # 16-bit, as the file
        assert ds[i]["channels"] == ("bright-field",)
    reasons = _reasons(root)
    assert sum("Undecidable is excluded" in r for r in reasons) == 4
    assert any("'Debris' is not an RBC-MC class" in r for r in reasons)
    assert any("class folder is missing" in r for r in reasons)


@pytest.mark.slow  # builds or embeds a benchmark's sample (once per session)
def test_idr0017_patches_are_the_boxes_of_zipped_and_unzipped_plates(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    from safetensors.numpy import load_file

    src, root = raw("idr0017", tmp_path_factory), release("idr0017", tmp_path_factory)
    ds = load("all", root=root)
    boxes = load_file(str(src / "P2" / "P2_coordinates.safetensors"))
    plates, sizes = set(), set()
    for i in range(len(ds)):
        meta = ds[i]["meta"]
        plates.add(meta["plate"])
        sizes.add(ds.read_array(i).shape[1:])
        if meta["plate"] == "P2":
            name = meta["file"].split("/", 1)[1]
            y0, y1, x0, x1 = meta["box"]
            whole = tifffile.imread(src / "P2" / name)
            np.testing.assert_array_equal(ds.read_array(i)[0], whole[y0:y1, x0:x1])
            assert [y0, y1, x0, x1] in np.clip(boxes[f"idr0017-P2-converted/{name}"], 0, 72).tolist()
    assert plates == {"P1", "P2"} and len(sizes) > 1  # a clipped box makes a patch of another size
    reasons = _reasons(root)
    assert any("no crop boxes" in r for r in reasons) and any("not in the plate zip" in r for r in reasons)
    assert any("lies outside" in r for r in reasons)
    assert {json.loads(m)["control"] for m in pd.read_parquet(root / "manifest.parquet")["meta"]} == {
        True,
        False,
    }


@pytest.mark.slow  # builds or embeds a benchmark's sample (once per session)
def test_jumpcp_folds_tapes_and_names_the_controls(tmp_path_factory: pytest.TempPathFactory) -> None:
    src, root = raw("jumpcp", tmp_path_factory), release("jumpcp", tmp_path_factory)
    ds = load("all", root=root)
    sample = ds[0]
    tape = np.asarray(Image.open(src / sample["meta"]["file"]))
    np.testing.assert_array_equal(ds.read_array(0), tape.reshape(160, 5, 160).transpose(1, 0, 2))
    assert sample["channels"] == ("nucleus", "er", "rna", "agp", "mitochondria")
    meta = pd.DataFrame([json.loads(m) for m in pd.read_parquet(root / "manifest.parquet")["meta"]])
    dmso = meta["broad_sample"] == ""
    assert set(meta.loc[dmso, "control_type"]) == {"negcon"} and set(meta.loc[~dmso, "pert_type"]) == {"trt"}
    assert meta["plate"].nunique() == 7
    reasons = _reasons(root)
    assert (
        sum("missing cell image" in r for r in reasons) == 7 and sum("names plate" in r for r in reasons) == 7
    )


@pytest.mark.slow  # builds or embeds a benchmark's sample (once per session)
def test_hpav23_reorders_the_png_samples_and_joins_locations(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    src, root = raw("hpav23", tmp_path_factory), release("hpav23", tmp_path_factory)
    ds = load("all", root=root)
    table = pd.read_csv(src / "metadata.csv")
    for i in (0, 7):
        meta = ds[i]["meta"]
        rgba = np.asarray(Image.open(src / meta["file"]))
        # the reference's (OpenCV BGRA) order: microtubules = blue, er = green, nucleus = red, protein = alpha
        np.testing.assert_array_equal(ds.read_array(i), rgba.transpose(2, 0, 1)[[2, 1, 0, 3]])
        row = table.iloc[meta["row"]]
        assert (
            meta["locations"] == "|".join(str(row["locations"]).split(","))
            if row["locations"] == row["locations"]
            else meta["locations"] == ""
        )
        assert meta["cell_id"] == str(int(row["cell_id"]))  # a float column still names the file
    assert ds[0]["channels"] == ("microtubules", "er", "nucleus", "protein")
    reasons = _reasons(root)
    assert any("missing cell image" in r for r in reasons) and any("without antibody" in r for r in reasons)


@pytest.mark.slow  # builds or embeds a benchmark's sample (once per session)
def test_cellphie_cells_are_masked_and_keep_their_split(tmp_path_factory: pytest.TempPathFactory) -> None:
    src, root = raw("cellphie", tmp_path_factory), release("cellphie", tmp_path_factory)
    images, masks = np.load(src / "images.npy"), np.load(src / "soma_masks.npy")
    ds = load("all", root=root)
    for i in (0, 11, len(ds) - 1):
        row = ds[i]["meta"]["row"]
        np.testing.assert_array_equal(ds.read_array(i), images[row] * masks[row][None])
        assert isinstance(ds[i]["meta"]["train"], bool) and len(ds[i]["channels"]) == 14
    assert len(ds) == len(pd.read_csv(src / "cells.csv"))


@pytest.mark.slow  # builds or embeds a benchmark's sample (once per session)
def test_adapters_read_the_bucket_layout_from_s3(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--input s3://.../CHAMMI-75`` finds each benchmark under its default prefix and builds the same
    release as the folder (globs with ``**``, plate zips read by range)."""
    with S3Server() as server:
        for k, v in server.env().items():
            monkeypatch.setenv(k, v)
        for name, prefix in (("rbc-mc", "CHAMMI-75_test/rbc-mc"), ("idr0017", "CHAMMI-75_test/idr0017")):
            url = server.upload(raw(name, tmp_path_factory), "chammi", f"CHAMMI-75/{prefix}")
            out = tmp_path / SOURCES[name]
            argv = ["--source", SOURCES[name], "--input", url.rsplit("/", 2)[0], "--output", str(out)]
            assert build_cli.main([*argv, "--workers", "1", "--quiet", "--set", "cells_per_shard=16"]) == 0
            local = release(name, tmp_path_factory)
            assert (out / "manifest.parquet").read_bytes() == (local / "manifest.parquet").read_bytes()
            assert _report(out)["inputs"][SOURCES[name]] == url.rsplit("/", 2)[0]


@pytest.mark.slow  # builds or embeds a benchmark's sample (once per session)
def test_input_above_the_layout_uses_the_prefix_option(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture
) -> None:
    top = tmp_path / "mirror"
    shutil.copytree(raw("rbc-mc", tmp_path_factory), top / "tests" / "rbc")
    argv = ["--source", "rbc_mc", "--input", str(top), "--output", str(tmp_path / "r"), "--workers", "1"]
    assert build_cli.main([*argv, "--quiet"]) == 2  # the default prefix is not there
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"no benchmark layout found at {top}" in err
    assert build_cli.main([*argv, "--quiet", "--set", "rbc_mc.prefix=tests/rbc"]) == 0


def test_cellphie_pickle_is_converted_only_on_opt_in(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from pipelines.sources.benchmarks.cellphie.synth import PICKLE, write_sample

    folder = write_sample(tmp_path / "pub", seed=1, convert=False)
    out = tmp_path / "conv"
    # a build never reads the pickle: it says how to convert it
    assert (
        build_cli.main(["--source", "cellphie", "--input", str(folder), "--output", str(tmp_path / "r")]) == 2
    )
    assert "chammi-build cellphie-convert" in capsys.readouterr().err
    # no opt-in: refused before reading it, nothing written
    argv = ["cellphie-convert", "--input", str(folder / PICKLE), "--output", str(out)]
    assert build_cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "refusing to unpickle" in err and not out.exists()
    assert build_cli.main([*argv, "--trust-pickle"]) == 0
    assert "WARNING: unpickling" in capsys.readouterr().err
    assert json.loads((out / "cellphie.json").read_text())["cells"] == len(pd.read_csv(out / "cells.csv"))


def test_a_hostile_pickle_is_refused_even_with_the_opt_in(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import pickle

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):  # what a malicious pickle does: call a function on load
            return (open, (str(marker), "w"))

    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"image": [Payload()]}))
    argv = ["cellphie-convert", "--input", str(tmp_path / "evil.pkl"), "--output", str(tmp_path / "o")]
    assert build_cli.main([*argv, "--trust-pickle"]) == 2
    err = capsys.readouterr().err
    assert "the pickle references io.open, which the CellPHIE converter does not load" in err
    assert not marker.exists()
