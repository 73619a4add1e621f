"""CHAMMI-75 stored guided crops (``chammi75.store: crops | both``): the cutting, the options, and releases
built through the command line (byte-identical rebuilds, exact shapes, lineage, splits, skips, stream)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from torch.utils.data import DataLoader

import chammi_cli.build as cli
from chammi_data import load, stream
from chammi_data.augment.guided_crop import CropSize, GuidedCrop, load_crop_table, resize_square
from chammi_data.format.codec import Guidance
from chammi_data.format.schema import Cell
from chammi_data.format.validate import validate_release
from chammi_data.loading.collate import group_by_channels_uint8
from pipelines.sources.chammi75.crops import TABLE_KEY, crop_boxes, crop_cells, pick_cells, table_to_options
from pipelines.sources.chammi75.layout import METADATA_TABLES, guidance_path
from pipelines.sources.chammi75.pipeline import Chammi75Pipeline

ROOT = Path(__file__).resolve().parents[2]
SIZE = 24
SETTINGS = ["chammi75.images_per_unit=3", "chammi75.holdout_studies=[idr0017]", "cells_per_shard=3"]
SETTINGS += [f"chammi75.crop_size={SIZE}", "chammi75.crops_per_image=3"]


# -------------------------------------------------------------------------------------------- the cutting
def test_boxes_are_study_sized_and_clamped_inside_the_image_never_padded():
    size = CropSize(100, 400)  # side = 100 * 800 / 400 = 200 image pixels
    cells = np.array([[0, 0], [799, 599], [400, 300], [10, 590]])
    boxes = crop_boxes(600, 800, cells, size, 8, "img")
    assert [(b.top, b.left, b.side, b.cell) for b in boxes] == [
        (0, 0, 200, 0),  # top-left corner: shifted right and down
        (400, 600, 200, 1),  # bottom-right corner: shifted up and left
        (200, 300, 200, 2),  # centred on the cell
        (400, 0, 200, 3),
    ]
    assert [(b.x, b.y) for b in boxes] == [tuple(c) for c in cells.tolist()]


def test_a_tiny_image_gives_its_largest_square_and_a_study_used_whole_its_centred_square():
    tiny = crop_boxes(30, 50, np.array([[49, 29]]), CropSize(100, 400), 8, "tiny")  # side 12.5 -> 12
    assert [(b.top, b.left, b.side) for b in tiny] == [(18, 38, 12)]
    smaller = crop_boxes(10, 14, np.array([[3, 3]]), CropSize(400, 400), 8, "smaller")  # side 14 > 10
    assert [(b.top, b.left, b.side) for b in smaller] == [(0, 0, 10)]
    whole = crop_boxes(72, 96, np.zeros((0, 2)), CropSize(None, None), 8, "whole")
    assert [(b.top, b.left, b.side, b.cell, b.x) for b in whole] == [(0, 12, 72, -1, None)]


def test_an_image_without_cells_in_a_cropped_study_has_no_crop():
    assert crop_boxes(100, 100, np.zeros((0, 2)), CropSize(50, 100), 8, "empty") == []


def test_the_cells_past_the_cap_are_a_seeded_draw_of_the_image_id():
    assert pick_cells(5, 8, "a").tolist() == [0, 1, 2, 3, 4]
    a = pick_cells(100, 8, "chammi75-0123456789abcdef")
    assert len(set(a.tolist())) == 8 and (np.diff(a) > 0).all()
    assert a.tolist() == pick_cells(100, 8, "chammi75-0123456789abcdef").tolist()  # the same every time
    draws = {tuple(pick_cells(100, 8, f"chammi75-{i:016x}").tolist()) for i in range(20)}
    assert len(draws) == 20  # another image, other cells


def test_a_stored_crop_is_the_streams_crop_without_jitter():
    """The build cuts with the stream's own box and resize: with no jitter the stream's crop around cell k is
    byte for byte the stored crop around cell k."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (3, 150, 96), dtype=np.uint8)
    cells = np.array([[5, 4], [90, 140], [50, 75], [60, 20]], np.int32)
    table = load_crop_table()
    cell = Cell(image, ("nucleus", "membrane", "protein"), "chammi75", "", "chammi75-00000000000000aa")
    cell.groups, cell.guidance = {"dataset": "wtc0001"}, Guidance(cells)
    opts = {"crop_size": 32, "crops_per_image": 8, TABLE_KEY: table_to_options(table)}
    stored = {c.meta["crop.cell"]: c for c in crop_cells(cell, opts)}
    assert sorted(stored) == [0, 1, 2, 3]
    guided = GuidedCrop(32, table, jitter=0.0)
    for seed in range(12):
        crop, (top, left, side, k) = guided(image, cells, "wtc0001", seed)
        meta = stored[k].meta
        assert (meta["crop.y0"], meta["crop.x0"], meta["crop.side"]) == (top, left, side)
        np.testing.assert_array_equal(stored[k].image, crop)
    assert stored[0].cell_id == "chammi75-00000000000000aa-crop0" and stored[0].meta["kind"] == "crop"


def test_bad_values_are_named_with_what_is_allowed():
    pipeline = Chammi75Pipeline()
    cases = {
        "store": ("foo", "chammi75.store must be one of images, crops, both, got 'foo'"),
        "crop_size": (0, "chammi75.crop_size must be an integer in 1..4096, got 0"),
        "crops_per_image": (True, "chammi75.crops_per_image must be an integer >= 1, got True"),
        TABLE_KEY: ({}, "unknown option(s) ['_crop_table']"),  # set by the build, never by a user
    }
    for key, (value, message) in cases.items():
        with pytest.raises(ValueError, match=re.escape(message)):
            pipeline.options({key: value})
    assert TABLE_KEY not in pipeline.options({})  # whole images need no crop table
    assert pipeline.options({"store": "crops"})[TABLE_KEY]["studies"]["wtc0001"] == [256, 450]


def test_another_crop_table_is_read_once_into_the_options(tmp_path: Path):
    table = tmp_path / "crops.yaml"
    table.write_text("studies:\n  hpa0018: {crop: 64, long_side: 128, source: test}\n")
    opts = Chammi75Pipeline().options({"store": "crops", "crop_table": str(table), "crop_size": 16})
    table.unlink()  # the workers cut with the table the options hold, not the file
    image = Cell(np.zeros((1, 128, 128), np.uint8), ("nucleus",), "chammi75", "", "chammi75-00000000000000bb")
    image.groups, image.guidance = {"dataset": "hpa0018"}, Guidance(np.array([[64, 64]], np.int32))
    (crop,) = crop_cells(image, opts)
    assert (crop.meta["crop.side"], crop.image.shape) == (64, (1, 16, 16))
    with pytest.raises(ValueError, match=r"config chammi75\.crop_table: .*No such file"):
        Chammi75Pipeline().options({"store": "crops", "crop_table": str(table)})
    (tmp_path / "bad.yaml").write_text("studies:\n  x: {crop: 0, long_side: 10, source: s}\n")
    with pytest.raises(ValueError, match=r"config chammi75\.crop_table: .*study x"):
        Chammi75Pipeline().options({"store": "both", "crop_table": str(tmp_path / "bad.yaml")})


def test_a_bad_store_value_is_one_line_and_exit_2_from_the_command_line(c75_raw: Path, tmp_path: Path):
    argv = ["--source", "chammi75", "--input", str(c75_raw), "--output", str(tmp_path / "out")]
    run = subprocess.run(
        [sys.executable, "-m", "chammi_cli.build", *argv, "--set", "chammi75.store=foo"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert run.returncode == 2 and run.stdout == ""
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "chammi75.store" in lines[0] and "images, crops, both" in lines[0], run.stderr
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------ the releases
@pytest.fixture(scope="module")
def no_cells_raw(c75_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The sample with one image of a cropped study (hpa0018) left without cells (its guidance removed);
    returns (root, the guidance file the skip must name, relative to the root)."""
    root = tmp_path_factory.mktemp("c75_nocells") / "CHAMMI-75"
    shutil.copytree(c75_raw, root)
    table = pd.read_csv(root / METADATA_TABLES["full"], dtype=str, keep_default_na=False)
    hpa = table[table["experiment.study"] == "hpa0018"].sort_values(
        ["imaging.multi_channel_id", "imaging.channel"]
    )
    first = hpa[hpa["imaging.multi_channel_id"] == hpa["imaging.multi_channel_id"].iloc[0]]
    for png in first["storage.path"]:
        (root / guidance_path(png)).unlink()
    return root, guidance_path(first["storage.path"].iloc[0])


def _build(raw: Path, out: Path, store: str, subprocess_cli: bool = False) -> Path:
    argv = ["--source", "chammi75", "--input", str(raw), "--output", str(out), "--workers", "1", "--quiet"]
    argv += [a for s in [*SETTINGS, f"chammi75.store={store}"] for a in ("--set", s)]
    if subprocess_cli:  # the real command line, in its own process
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        run = subprocess.run(
            [sys.executable, "-m", "chammi_cli.build", *argv], cwd=ROOT, env=env, capture_output=True
        )
        assert run.returncode == 0, run.stderr.decode()
    else:
        assert cli.main(argv) == 0
    return out


@pytest.fixture(scope="module")
def crops_release(no_cells_raw: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(no_cells_raw[0], tmp_path_factory.mktemp("c75_crops") / "release", "crops", True)


@pytest.mark.slow
def test_a_crops_release_rebuilds_byte_identical(
    no_cells_raw, crops_release: Path, tmp_path: Path, hash_tree
):
    again = _build(no_cells_raw[0], tmp_path / "again", "crops")
    first, second = hash_tree(crops_release), hash_tree(again)
    assert first == second and any(p.endswith(".tar") for p in first) and "manifest.parquet" in first
    reports = [json.loads((r / "build_report.json").read_text()) for r in (crops_release, again)]
    assert (
        reports[0]["skipped"] == reports[1]["skipped"]
        and reports[0]["accounting"] == reports[1]["accounting"]
    )


@pytest.mark.slow
def test_a_crops_release_holds_exact_crops_of_the_whole_images(
    no_cells_raw, crops_release: Path, c75_release
):
    root, no_cells = no_cells_raw
    crops, whole = load("all", root=crops_release), load("all", root=c75_release)
    parent = {cid: i for i, cid in enumerate(whole.rows["cell_id"])}
    table = load_crop_table()
    per_image: dict[str, int] = {}
    for i in range(len(crops)):
        s = crops[i]
        meta, src = s["meta"], whole[parent[s["meta"]["parent_cell_id"]]]
        assert s["image"].shape == (len(src["channels"]), SIZE, SIZE) and s["channels"] == src["channels"]
        assert meta["kind"] == "crop" and "centroids" not in meta  # a crop carries no cells of its own
        assert meta["imaging.multi_channel_id"] == src["meta"]["imaging.multi_channel_id"]
        assert meta["train_test_split"] == src["meta"]["train_test_split"]  # holdout_studies holds crops out
        y0, x0, side = meta["crop.y0"], meta["crop.x0"], meta["crop.side"]
        h, w = src["image"].shape[1:]
        assert 0 <= y0 <= h - side and 0 <= x0 <= w - side
        study_side = table.for_study(meta["experiment.study"]).side(h, w)
        if study_side is None:  # used whole: the centred largest square
            assert (side, meta["crop.cell"], meta["crop.x"]) == (min(h, w), -1, None)
        else:
            assert side == min(round(study_side), h, w)
            x, y = src["meta"]["centroids"][meta["crop.cell"]]
            assert (meta["crop.x"], meta["crop.y"]) == (x, y) and x0 <= x < x0 + side and y0 <= y < y0 + side
        raw = crops.read_array(i)
        cut = whole.read_array(parent[meta["parent_cell_id"]])[:, y0 : y0 + side, x0 : x0 + side]
        np.testing.assert_array_equal(raw, resize_square(cut, SIZE))
        per_image[meta["parent_cell_id"]] = per_image.get(meta["parent_cell_id"], 0) + 1
    assert max(per_image.values()) == 3  # crops_per_image
    report = json.loads((crops_release / "build_report.json").read_text())
    (skip,) = report["skipped"]
    assert skip["file"] == no_cells and "no cells to crop around" in skip["reason"]
    kinds = report["accounting"]["chammi75"]["kinds"]
    assert kinds["images"] == {"in": 18, "used": 17, "skipped": 1}
    assert kinds["crops"] == {"in": len(crops), "used": len(crops), "skipped": 0}
    assert len(per_image) == 17
    assert validate_release(crops_release, progress=False).ok


@pytest.mark.slow
def test_a_crops_release_streams_with_bag_of_channels(crops_release: Path):
    opts = {"split": "train", "seed": 3, "output": "uint8", "guided_crop": SIZE, "buffer": 4}
    samples = list(stream(crops_release, **opts))
    n_train = (pd.read_parquet(crops_release / "manifest.parquet")["train_test_split"] == "Train").sum()
    assert len(samples) == n_train and {s["image"].shape[1:] for s in samples} == {(SIZE, SIZE)}
    assert all("crop_box" not in s["meta"] for s in samples)  # stored crops are passed on as they are
    collate = partial(group_by_channels_uint8, bag_of_channels=True)
    loader = DataLoader(stream(crops_release, **opts), batch_size=8, collate_fn=collate, num_workers=0)
    batches = [b for batch in loader for b in batch]
    assert all(b["image"].shape[1:] == (1, SIZE, SIZE) for b in batches)  # one channel per sample
    assert sum(len(b["cell_id"]) for b in batches) == sum(len(s["channels"]) for s in samples)


@pytest.mark.slow
def test_both_keeps_the_whole_images_and_the_same_crops(
    no_cells_raw, crops_release: Path, c75_release, tmp_path
):
    both = _build(no_cells_raw[0], tmp_path / "both", "both")
    ds = load("all", root=both)
    rows = ds.rows
    kind = rows["meta"].map(lambda m: json.loads(m)["kind"])
    assert set(kind) == {"image", "crop"} and (kind == "image").sum() == 18  # the image without cells too
    assert (rows["cell_id"].str.contains("-crop") == (kind == "crop")).all()  # the README's selector
    crops = pd.read_parquet(crops_release / "manifest.parquet").set_index("cell_id")["sha256"]
    mine = rows[kind == "crop"].set_index("cell_id")["sha256"]
    assert mine.sort_index().equals(crops.sort_index())  # the same crops as store: crops
    images = [i for i in range(len(ds)) if kind.iloc[i] == "image"]
    assert all(ds[i]["meta"]["centroids"].ndim == 2 for i in images)  # whole images keep their cells
    assert validate_release(both, progress=False).ok
