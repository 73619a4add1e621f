"""HPA pipeline: table selection, per-field processing, border policies, bad input, tasks (CPU, tmp_path)."""

from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import pipelines.sources.hpa.pipeline as hpa
from chammi_data.format.vocab import SOURCES
from pipelines.sources.base import UnitSkip
from pipelines.sources.hpa.pipeline import HPAPipeline, _image_keys, read_channel
from pipelines.sources.hpa.synth import quantise, render_field
from pipelines.sources.synthetic import write_source_sample

STAINS = ("red", "green", "blue", "yellow")


def write_field(folder: Path, fid: str, cls: int, line: str, bits: int, seed: int) -> dict[str, np.ndarray]:
    """One synthetic field as 4 PNGs; returns the written arrays."""
    rng = np.random.default_rng(seed)
    images, _ = render_field(rng, cls, line)
    out = {}
    for stain in STAINS:
        out[stain] = quantise(rng, images[stain], bits, 1.0, 0.03, 0.02)
        Image.fromarray(out[stain]).save(folder / f"{fid}_{stain}.png", compress_level=1)
    return out


def write_tables(root: Path, rows: list[tuple[str, str, str]]) -> None:
    """train.csv (ID, Label) and kaggle_2021.tsv (Image, Label, Cellline, in_trainset) for (ID, Label,
    line)."""
    pd.DataFrame({"ID": [r[0] for r in rows], "Label": [r[1] for r in rows]}).to_csv(
        root / "train.csv", index=False
    )
    pd.DataFrame(
        {
            "Image": [r[0] for r in rows if r[2]],
            "Label": [r[1] for r in rows if r[2]],
            "Cellline": [r[2] for r in rows if r[2]],
            "in_trainset": "True",
        }
    ).to_csv(root / "kaggle_2021.tsv", sep="\t", index=False)


@pytest.fixture(scope="module")
def hpa_input(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hpa")
    img = root / "train"
    img.mkdir()
    write_field(img, "f16", 4, "U-2 OS", 16, seed=1)
    write_field(img, "f08", 14, "HEK 293", 8, seed=2)
    write_tables(
        root,
        [
            ("f16", "4", "U-2 OS"),
            ("f08", "14", "HEK 293"),
            ("multi", "4|14", "HeLa"),
            ("other", "2", "HeLa"),
            ("bad", "x", "HeLa"),
            ("f16", "4", "U-2 OS"),
            ("noline", "7", ""),
        ],
    )
    return root


def opts(**section):
    """HPA options: the defaults with ``section`` merged over them."""
    return HPAPipeline().options(section)


def _units(root: Path, section: dict | None = None):
    """(units, skipped) of the HPA discovery of ``root``."""
    found = HPAPipeline().discover(root, opts(**(section or {})))
    return found.units, found.skipped


def test_discover_keeps_single_label_chammi_rows_and_counts_the_rest(hpa_input):
    units, skipped = _units(hpa_input)
    assert [u.unit_id for u in units] == ["f08", "f16"]  # sorted by unit id
    reasons = {s.row: s.reason for s in skipped}
    assert reasons[3].startswith("multi-label") and "class not in CHAMMI" in reasons[4]
    assert (
        reasons[5].startswith("unknown label")
        and "duplicate ID" in reasons[6]
        and "no cell line" in reasons[7]
    )
    assert len(units) + len(skipped) == 7  # in = kept + skipped
    assert units[1].payload["label"] == "Nuclear speckles" and units[1].payload["cellline"] == "U-2 OS"
    assert units[1].payload["files"]["blue"].endswith("train/f16_blue.png")


@pytest.mark.parametrize("uid", ["f16", "f08"])
def test_process_makes_512_crops_in_hpa_channel_order(hpa_input, uid):
    pipe = HPAPipeline()
    unit = next(u for u in _units(hpa_input)[0] if u.unit_id == uid)
    result = pipe.process(unit, opts())
    assert 3 <= len(result.cells) <= 6 and not result.skipped
    raw_blue = read_channel(hpa_input / "train" / f"{uid}_blue.png")
    for cell in result.cells:
        assert cell.image.shape == (4, 512, 512) and cell.image.dtype == np.uint8
        assert cell.channels == SOURCES["hpa"].channels == ("microtubules", "protein", "nucleus", "er")
        assert cell.groups == {"cell_type": unit.payload["cellline"]}
        cy, cx = cell.meta["centroid"]
        assert raw_blue[int(cy), int(cx)] > np.median(raw_blue)  # nucleus channel is the blue file
        assert cell.image[2, 256, 256] > np.median(cell.image[2])  # ...and the crop is centred on the cell
        assert cell.meta["bit_depth"] == (16 if uid == "f16" else 8)
        assert (
            cell.meta["original_size"] == [768, 768] and cell.meta["files"]["blue"] == f"train/{uid}_blue.png"
        )
        for key in ("bbox", "area", "crop_touched_border", "cell_touches_edge", "ID"):
            assert key in cell.meta
    again = pipe.process(unit, opts())
    assert [c.cell_id for c in again.cells] == [c.cell_id for c in result.cells]  # stable ids
    assert all(np.array_equal(a.image, b.image) for a, b in zip(again.cells, result.cells, strict=True))


def test_border_policies(hpa_input):
    pipe = HPAPipeline()
    unit = next(u for u in _units(hpa_input)[0] if u.unit_id == "f16")
    pad = pipe.process(unit, opts(border="pad"))
    shift = pipe.process(unit, opts(border="shift"))
    skip = pipe.process(unit, opts(border="skip"))
    touched = [c.meta["crop_touched_border"] for c in pad.cells]
    assert any(touched)  # a 768 field always puts some 512 boxes past its edge
    assert len(skip.cells) == touched.count(False) and len(skip.skipped) == touched.count(True)
    assert all("policy skip" in s.reason for s in skip.skipped)
    assert len(shift.cells) == len(pad.cells)
    for p, s in zip(pad.cells, shift.cells, strict=True):
        if p.meta["crop_touched_border"]:
            assert (p.image == 0).all(axis=0).any()  # zero padding present
            assert 0 <= s.meta["crop_top"] <= 256 and 0 <= s.meta["crop_left"] <= 256


def test_masking_neighbours_zeroes_other_cells(hpa_input):
    pipe = HPAPipeline()
    unit = next(u for u in _units(hpa_input)[0] if u.unit_id == "f16")
    plain = pipe.process(unit, opts())
    masked = pipe.process(unit, opts(mask_neighbours=True))
    assert not plain.cells[0].meta["masked_neighbours"] and masked.cells[0].meta["masked_neighbours"]
    assert all(m.image.sum() <= p.image.sum() for m, p in zip(masked.cells, plain.cells, strict=True))
    assert any(m.image.sum() < p.image.sum() for m, p in zip(masked.cells, plain.cells, strict=True))


@pytest.fixture(scope="module")
def template_field(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("template")
    write_field(folder, "a", 10, "HeLa", 8, seed=5)
    return folder


def _one_field(tmp_path: Path, template: Path) -> tuple[Path, HPAPipeline]:
    img = tmp_path / "train"
    shutil.copytree(template, img)
    write_tables(tmp_path, [("a", "10", "HeLa")])
    return img, HPAPipeline()


@pytest.mark.parametrize(
    "damage, reason",
    [
        ("missing", "missing channel file\\(s\\): a_green.png$"),
        ("two missing", "missing channel file\\(s\\): a_red.png, a_green.png$"),
        ("truncated", "unreadable or truncated"),
        ("size", r"channel sizes differ from a_blue.png \(768x768\): a_green.png is 100x100$"),
        (
            "depth",
            "mixed bit depths in one field: a_red.png 8-bit, a_green.png 16-bit, a_blue.png 8-bit, "
            "a_yellow.png "
            "8-bit",
        ),
        (
            "bomb",
            r"image too large: a_green.png is 16000 x 16000 \(256,000,000 pixels\), over "
            r"hpa.max_field_pixels = "
            "100,000,000; not decoded",
        ),
        ("constant", "constant image"),
        ("rgb", "single-channel"),
        ("nocells", "no cells"),
    ],
)
def test_bad_fields_are_skipped_with_file_and_reason(tmp_path, template_field, damage, reason):
    img, pipe = _one_field(tmp_path, template_field)
    target = img / "a_green.png"
    if damage == "missing":
        target.unlink()
    elif damage == "two missing":
        target.unlink()
        (img / "a_red.png").unlink()
    elif damage == "depth":
        Image.fromarray(np.full((768, 768), 1000, np.uint16) + np.arange(768, dtype=np.uint16)).save(target)
    elif damage == "bomb":  # a PNG whose header promises 16000 x 16000 16-bit pixels: refused before decoding
        target.write_bytes(png_header_only(16000, 16000, 16))
    elif damage == "truncated":
        target.write_bytes(target.read_bytes()[:300])
    elif damage == "size":
        Image.fromarray(np.ones((100, 100), np.uint8)).save(target)
    elif damage == "constant":
        Image.fromarray(np.full((768, 768), 7, np.uint8)).save(target)
    elif damage == "rgb":
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (768, 768, 3), dtype=np.uint8)).save(target)
    elif damage == "nocells":
        blue = np.random.default_rng(0).poisson(5, (768, 768)).astype(np.uint8)  # an empty well
        Image.fromarray(blue).save(img / "a_blue.png")
    units = pipe.discover(tmp_path, opts()).units
    with pytest.raises(UnitSkip, match=reason) as err:
        pipe.process(units[0], opts())
    expected = (
        "a_blue.png"
        if damage in ("nocells", "depth")
        else "a_red.png"
        if damage == "two missing"
        else "a_green.png"
    )
    assert err.value.file.endswith(expected) and err.value.row == 1


def png_header_only(width: int, height: int, bits: int) -> bytes:
    """The signature and IHDR chunk of a grey PNG of that size, and nothing else."""
    ihdr = struct.pack(">IIBBBBB", width, height, bits, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + b"IHDR"
        + ihdr
        + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    )


def test_size_limit_is_checked_before_decoding(tmp_path, template_field, monkeypatch):
    img, pipe = _one_field(tmp_path, template_field)
    unit = pipe.discover(tmp_path, opts()).units[0]
    monkeypatch.setattr(hpa, "read_channel", lambda *a: pytest.fail("decoded an image over the limit"))
    with pytest.raises(
        UnitSkip, match=r"a_red.png is 768 x 768 \(589,824 pixels\), over hpa.max_field_pixels = 1,000"
    ):
        pipe.process(unit, opts(max_field_pixels=1000))


def test_mixed_bit_depth_can_be_allowed(tmp_path, template_field):
    img, pipe = _one_field(tmp_path, template_field)
    green = np.asarray(Image.open(img / "a_green.png")).astype(np.uint16) * 200
    Image.fromarray(green).save(img / "a_green.png")
    unit = pipe.discover(tmp_path, opts()).units[0]
    cells = pipe.process(unit, opts(mixed_bit_depth="allow")).cells
    assert cells and cells[0].meta["bit_depth"] == 16
    assert cells[0].meta["channel_bit_depths"] == {"microtubules": 8, "protein": 16, "nucleus": 8, "er": 8}
    with pytest.raises(ValueError, match="mixed_bit_depth"):
        opts(mixed_bit_depth="maybe")


@pytest.mark.parametrize("sep", [",", "\t"])
def test_cell_line_table_comma_or_tab_with_urls_or_ids(tmp_path, template_field, sep):
    """HPA's kaggle_2021.tsv is comma-separated despite its suffix; Image values may be HPA public
    addresses."""
    img = tmp_path / "train"
    img.mkdir()
    for p in template_field.iterdir():
        shutil.copy(p, img / p.name.replace("a_", "10005_921_B9_1_"))
        shutil.copy(p, img / p.name.replace("a_", "b7c3"))
    pd.DataFrame({"ID": ["10005_921_B9_1", "b7c3"], "Label": ["10", "10"]}).to_csv(
        tmp_path / "train.csv", index=False
    )
    pd.DataFrame(
        {
            "Image": ["https://images.proteinatlas.org/10005/921_B9_1", "b7c3"],
            "Label": ["10", "10"],
            "Cellline": ["HeLa", "A549"],
            "in_trainset": ["True", "False"],
        }
    ).to_csv(tmp_path / "kaggle_2021.tsv", sep=sep, index=False)
    found = HPAPipeline().discover(tmp_path, opts())
    assert not found.skipped and found.found == {"fields": 2}
    assert {u.payload["id"]: u.payload["cellline"] for u in found.units} == {
        "10005_921_B9_1": "HeLa",
        "b7c3": "A549",
    }


def test_missing_tables_and_bad_options_raise(tmp_path):
    with pytest.raises(FileNotFoundError, match="train.csv"):
        HPAPipeline().discover(tmp_path, opts())
    with pytest.raises(ValueError, match="border"):
        opts(border="wrap")
    with pytest.raises(ValueError, match="unknown option"):
        opts(crop_size=3)


def test_cell_line_table_matches_urls_and_paths():
    assert "10005_921_B9_1" in _image_keys("https://images.example.org/10005/921_B9_1_")
    assert "5c27f04c-bb99" in _image_keys("train/5c27f04c-bb99.png")
    assert _image_keys("5c27f04c-bb99") == ["5c27f04c-bb99"]


def test_assign_follows_the_task_rules():
    table = pd.DataFrame(
        {
            "cell_id": [f"hpa-{i:016x}" for i in range(8)],
            "label": ["Mitochondria"] * 4 + ["Cytosol", "Nucleoplasm", "Mitochondria", "Cytosol"],
            "cell_type": ["HeLa", "A549", "HeLa", "A549", "HeLa", "A549", "HEK 293", "HEK 293"],
        }
    )
    out = HPAPipeline().assign(table, {}).set_index("cell_id")["train_test_split"]
    assert set(out.iloc[:4]) <= {"Train", "Task_one"}
    assert list(out.iloc[4:]) == ["Task_three", "Task_three", "Task_two", ""]  # novel class in HEK 293: none


@pytest.mark.slow
def test_synth_sample_fills_every_task(tmp_path):
    pipe = HPAPipeline()
    raw = write_source_sample(tmp_path, "hpa", 0)  # the generator's output, through the verified sample cache
    found = pipe.discover(raw, opts())
    units, skipped = found.units, found.skipped
    assert len(skipped) == 3 and {s.reason.split(" ")[0] for s in skipped} == {"multi-label", "class"}
    cells = [c for u in units for c in pipe.process(u, opts()).cells]
    assert 150 <= len(cells) <= 250
    table = pd.DataFrame([{"cell_id": c.cell_id, "label": c.label, **c.groups} for c in cells])
    table = table.merge(pipe.assign(table, {}))
    counts = table.groupby(["train_test_split", "label"]).size()
    for split, labels in (("Train", 4), ("Task_one", 4), ("Task_two", 4), ("Task_three", 3)):
        assert len(counts[split]) == labels, counts
    assert table[table.train_test_split == "Task_three"].cell_type.nunique() >= 2
    assert (table.train_test_split != "").all()
