"""CHAMMI-75 as a source: its published layout built from a folder and from an S3 server, every skip."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from PIL import Image
from safetensors.numpy import load_file

import chammi_cli.build as cli
from chammi_data import load
from chammi_data.format.validate import validate_release
from chammi_data.format.zarr_store import zarr_path
from pipelines.sources.chammi75.layout import METADATA_TABLES, guidance_path
from pipelines.sources.chammi75.synth import EMPTY, STUDIES
from tests.ome_zarr_helpers import check_ome_zarr_store
from tests.pipelines.helpers import quiet_build
from tests.servers import S3Server

OPTIONS = {"cells_per_shard": 2, "chammi75": {"images_per_unit": 3, "holdout_studies": ["idr0017"]}}


@pytest.fixture(scope="module")
def cli_release(c75_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample built through the command line (the shared ``c75_release`` is built by ``build()``)."""
    out = tmp_path_factory.mktemp("c75_release") / "release"
    settings = ["chammi75.images_per_unit=3", "chammi75.holdout_studies=[idr0017]", "cells_per_shard=2"]
    argv = [
        "--source",
        "chammi75",
        "--input",
        str(c75_raw),
        "--output",
        str(out),
        "--workers",
        "1",
        "--quiet",
    ]
    assert cli.main(argv + [a for s in settings for a in ("--set", s)]) == 0
    return out


def _table(root: Path) -> pd.DataFrame:
    return pd.read_csv(root / METADATA_TABLES["full"], dtype=str, keep_default_na=False)


@pytest.mark.slow
def test_release_holds_every_image_whole_with_its_cells(c75_raw: Path, cli_release: Path):
    c75_release = cli_release
    table = _table(c75_raw)
    manifest = pd.read_parquet(c75_release / "manifest.parquet")
    assert (
        len(manifest)
        == sum(n for _t, _hw, n, _s in STUDIES.values())
        == table["imaging.multi_channel_id"].nunique()
    )
    assert (manifest["source"] == "chammi75").all() and (manifest["label"] == "").all()
    held = manifest["dataset"] == "idr0017"
    assert set(manifest.loc[held, "train_test_split"]) == {"Validation"}
    assert set(manifest.loc[~held, "train_test_split"]) == {"Train"}
    ds = load("all", root=c75_release)
    by_id = {json.loads(m)["imaging.multi_channel_id"]: i for i, m in enumerate(ds.rows["meta"])}
    for mcid, rows in table.groupby("imaging.multi_channel_id"):
        rows = rows.assign(ch=rows["imaging.channel"].astype(int)).sort_values("ch")
        sample = ds[by_id[mcid]]
        assert sample["channels"] == tuple(rows["imaging.channel_type"])  # named by type, channel order
        raw = np.stack([np.asarray(Image.open(c75_raw / p)) for p in rows["storage.path"]])
        np.testing.assert_array_equal(ds.read_array(by_id[mcid]), raw)  # exact pixels
        meta = sample["meta"]
        assert meta["experiment.well"] == rows["experiment.well"].iloc[0]  # strings stay strings (B07, 007)
        assert meta["microscopy.fov"] == rows["microscopy.fov"].iloc[0]
        guidance = c75_raw / guidance_path(rows["storage.path"].iloc[0])
        if guidance.exists():
            np.testing.assert_array_equal(meta["centroids"], load_file(str(guidance))["data"])
        else:  # an image without cells has no guidance file: no centroids
            assert (mcid.split("/")[0], meta["centroids"].shape) == (EMPTY[0], (0, 2))
    report = validate_release(c75_release, progress=False)
    assert report.ok, report.summary()


@pytest.mark.slow
def test_zarr_side_is_one_ome_zarr_image_per_study_and_shape(c75_release: Path):
    from ome_zarr_models.v05.bioformats2raw import BioFormats2Raw

    store = zarr_path(c75_release, "chammi75")
    BioFormats2Raw.from_zarr(zarr.open_group(str(store), mode="r"))  # a valid OME-Zarr 0.5 collection
    attrs = json.loads((store / "zarr.json").read_text())["attributes"]
    assert [g["dataset"] for g in attrs["groups"]] == sorted(STUDIES)  # one group per study (one shape each)
    for g in attrs["groups"]:
        check_ome_zarr_store(store / g["path"], tuple(g["channels"]), g["rows"])
        assert "cell_ids" not in json.loads((store / g["path"] / "zarr.json").read_text())["attributes"]
    manifest = pd.read_parquet(c75_release / "manifest.parquet")
    shards = manifest.groupby("shard")[["dataset", "channels", "height"]].nunique()
    assert (shards == 1).all().all()  # no tar shard crosses a group


def _break(root: Path) -> dict[str, str]:
    """Make one image fail for each skip kind; returns {what: the file the skip must name}."""
    table = _table(root)
    rows = {m: g.sort_values("imaging.channel") for m, g in table.groupby("imaging.multi_channel_id")}
    ids = sorted(rows)
    hpa = [m for m in ids if m.startswith("hpa0018")]
    jump = [m for m in ids if m.startswith("jump0001")]
    wtc = [m for m in ids if m.startswith("wtc0001")]
    named = {}
    missing = rows[hpa[0]]["storage.path"].iloc[1]
    (root / missing).unlink()
    named["missing channel file"] = missing
    truncated = rows[hpa[1]]["storage.path"].iloc[2]
    (root / truncated).write_bytes((root / truncated).read_bytes()[:60])
    named["unreadable channel file"] = truncated
    small = rows[jump[0]]["storage.path"].iloc[3]
    Image.open(root / small).crop((0, 0, 50, 60)).save(root / small)
    named["disagree in size"] = small
    bad_guidance = guidance_path(rows[jump[1]]["storage.path"].iloc[0])
    (root / bad_guidance).write_bytes(b"not a safetensors file")
    named["unreadable guidance file"] = bad_guidance
    table.loc[table["imaging.multi_channel_id"] == wtc[0], "geometry.channels"] = "4"
    named["disagrees with geometry.channels"] = rows[wtc[0]]["storage.path"].iloc[0]
    lost = rows[wtc[1]].index[2]
    table.loc[lost, "imaging.multi_channel_id"] = "unknown"
    named["no imaging.multi_channel_id"] = table.loc[lost, "storage.path"]
    named["wtc0001 image left with 2 channels"] = rows[wtc[1]]["storage.path"].iloc[0]
    table.to_csv(root / METADATA_TABLES["full"], index=False)
    return named


@pytest.mark.slow
def test_every_skip_names_its_file_and_the_accounting_adds_up(c75_raw: Path, tmp_path: Path):
    root = tmp_path / "CHAMMI-75"
    shutil.copytree(c75_raw, root)
    named = _break(root)
    res = quiet_build("chammi75", root, tmp_path / "out", config=OPTIONS)
    assert res.ok, res.failed
    skips = {s.file.replace(f"{root}/", ""): s for s in res.skipped}
    for what, file in named.items():
        if what.startswith("wtc0001 image left"):
            assert "channel count 2 disagrees with geometry.channels ['3']" in skips[file].reason
            continue
        assert what in skips[file].reason, (what, skips.get(file))
    kinds = res.ledgers["chammi75"].tally()
    n_images = sum(n for _t, _hw, n, _s in STUDIES.values())
    assert kinds["images"] == {"in": n_images, "used": n_images - 6, "skipped": 6}
    assert (
        kinds["rows"]["in"] == kinds["rows"]["used"] + kinds["rows"]["skipped"]
        and kinds["rows"]["skipped"] == 1
    )
    report = json.loads((tmp_path / "out" / "build_report.json").read_text())
    assert report["accounting"]["chammi75"]["kinds"] == kinds
    assert {s["file"] for s in report["skipped"]} == set(named.values())  # relative to the input root


@pytest.mark.slow
def test_build_from_an_s3_server_equals_the_folder_build(
    c75_raw: Path, tmp_path: Path, monkeypatch, hash_tree
):
    folder = quiet_build("chammi75", c75_raw, tmp_path / "a", config=OPTIONS)
    with S3Server() as server:
        url = server.upload(c75_raw, "cells", "data/CHAMMI-75")
        for k, v in server.env().items():
            monkeypatch.setenv(k, v)
        remote = quiet_build("chammi75", url + "/", tmp_path / "b", config=OPTIONS)
        small_config = {"chammi75": {"metadata": "small", "cap_per_study": 3}}
        small = quiet_build("chammi75", url, tmp_path / "c", config=small_config)
    assert folder.ok and remote.ok and small.ok
    assert hash_tree(tmp_path / "a") == hash_tree(tmp_path / "b")  # same bytes, keys with + [ ] included
    assert json.loads((tmp_path / "b" / "build_report.json").read_text())["inputs"] == {"chammi75": url}
    manifest = pd.read_parquet(tmp_path / "c" / "manifest.parquet")
    assert manifest["dataset"].value_counts().to_dict() == {"hpa0018": 3, "wtc0001": 3}
    assert [s.count for s in small.skipped] == [1, 1]  # the cap, one entry per study
