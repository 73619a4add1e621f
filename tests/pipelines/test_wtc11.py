"""WTC-11: OME-TIFF reading, metadata checks, projection, channel order, fit to 238 x 374, synthetic data."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

import pipelines.sources.wtc11.synth as wtc11_synth
from pipelines.sources.base import UnitSkip
from pipelines.sources.wtc11.pipeline import STAGES, WTC11Pipeline, read_ome


def test_read_ome_names_and_sizes(wtc_raw: Path) -> None:
    meta = pd.read_csv(wtc_raw / "metadata.csv")
    arr, names, sizes = read_ome(wtc_raw / meta.crop_raw[0])
    assert arr.ndim == 4 and arr.shape[:2] == (2, 3) and arr.dtype == np.uint16
    assert names == ["dna", "membrane", "structure"]
    assert sizes == pytest.approx((wtc11_synth.PIXEL_UM,) * 3)


def test_process_projects_reorders_and_fits(wtc_raw: Path) -> None:
    pipe = WTC11Pipeline()
    found = pipe.discover(wtc_raw, pipe.options())
    units, skipped = found.units, found.skipped
    assert not skipped and len(units) == 42 and [u.unit_id for u in units] == sorted(u.unit_id for u in units)
    assert found.found == {"cells": 42}  # the accounting's "in": metadata rows
    cell = pipe.process(units[0], pipe.options()).cells[0]
    assert cell.image.shape == (3, 238, 374) and cell.image.dtype == np.uint8
    assert cell.channels == ("nucleus", "membrane", "protein")
    raw, _, _ = read_ome(wtc_raw / units[0].payload["crop_raw"])
    proj = raw.max(axis=0).astype(float)  # (C, Y, X): the brightest nucleus pixel must stay the brightest
    y, x = np.unravel_index(np.argmax(proj[0]), proj[0].shape)
    oy, ox = (238 - proj.shape[1]) // 2, (374 - proj.shape[2]) // 2
    if 0 <= y + oy < 238 and 0 <= x + ox < 374:
        assert cell.image[0, y + oy, x + ox] == 255
    assert cell.label in STAGES and cell.groups == {"Structure": units[0].payload["structure_name"]}
    assert cell.meta["crop_raw"] == units[0].payload["crop_raw"] and cell.meta["scale"] == 1.0
    # same raw identifiers -> same id
    assert pipe.process(units[0], pipe.options()).cells[0].cell_id == cell.cell_id


def test_scale_to_fit_keeps_whole_cell(tmp_path: Path) -> None:
    big = wtc11_synth.synth_cell("M0", "mito", (300, 500), 2, 1.0, 100.0, 10.0, np.random.default_rng(0))
    (tmp_path / "crop_raw").mkdir()
    wtc11_synth.write_ome(
        tmp_path / "crop_raw" / "1.ome.tiff", big, wtc11_synth.NAME_DICT["crop_raw"], "0-0-0-0-1"
    )
    pd.DataFrame(
        [
            {
                "CellId": 1,
                "structure_name": "SON",
                "cell_stage": "M0",
                "FOVId": 1,
                "PlateId": 1,
                "WellId": 1,
                "crop_raw": "crop_raw/1.ome.tiff",
                "crop_seg": "",
                "name_dict": json.dumps(wtc11_synth.NAME_DICT),
                "scale_micron": json.dumps([wtc11_synth.PIXEL_UM] * 3),
            }
        ]
    ).to_csv(tmp_path / "metadata.csv", index=False)
    pipe = WTC11Pipeline()
    unit = pipe.discover(tmp_path, pipe.options()).units[0]
    cropped = pipe.process(unit, pipe.options()).cells[0]
    fitted = pipe.process(unit, pipe.options({"fit": "scale_to_fit"})).cells[0]
    assert cropped.meta["scale"] == 1.0 and fitted.meta["scale"] == pytest.approx(374 / 500)
    assert fitted.image.shape == cropped.image.shape == (3, 238, 374)
    assert not np.array_equal(fitted.image, cropped.image)
    with pytest.raises(ValueError, match="fit must be"):
        pipe.options({"fit": "stretch"})


def test_metadata_mismatches_skip(wtc_copy: Path) -> None:
    table = pd.read_csv(wtc_copy / "metadata.csv")
    table.loc[0, "name_dict"] = json.dumps({"crop_raw": ["membrane", "dna", "structure"]})
    table.loc[1, "scale_micron"] = json.dumps([0.29, 0.108333, 0.108333])
    table.to_csv(wtc_copy / "metadata.csv", index=False)
    pipe = WTC11Pipeline()
    units = {u.payload["row"]: u for u in pipe.discover(wtc_copy, pipe.options()).units}
    with pytest.raises(
        UnitSkip, match=r"\['dna', 'membrane', 'structure'\] != name_dict crop_raw \['membrane'"
    ) as e:
        pipe.process(units[0], pipe.options())
    assert e.value.file.endswith(table.crop_raw[0]) and e.value.row == 0
    with pytest.raises(UnitSkip, match="PhysicalSizeZ"):
        pipe.process(units[1], pipe.options())


def test_stack_over_the_voxel_limit_is_not_decoded(wtc_raw: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pipe = WTC11Pipeline()
    unit = pipe.discover(wtc_raw, pipe.options()).units[0]
    monkeypatch.setattr(
        tifffile.TiffPageSeries, "asarray", lambda *a, **k: pytest.fail("decoded before the check")
    )
    with pytest.raises(
        UnitSkip,
        match=r"image too large: \d+\.ome\.tiff is 2 x 3 x \d+ x \d+ \([\d,]+ pixels\), over "
        r"wtc11\.max_stack_voxels = 1,000; not decoded",
    ) as exc:
        pipe.process(unit, pipe.options({"max_stack_voxels": 1000}))
    assert exc.value.file.endswith(unit.payload["crop_raw"])


def test_missing_columns_is_a_clear_error(tmp_path: Path) -> None:
    pd.DataFrame({"CellId": [1]}).to_csv(tmp_path / "metadata.csv", index=False)
    with pytest.raises(ValueError, match="lacks column"):
        WTC11Pipeline().discover(tmp_path, WTC11Pipeline().options())
    with pytest.raises(FileNotFoundError, match="metadata.csv"):
        WTC11Pipeline().discover(tmp_path / "nowhere", WTC11Pipeline().options())


def test_synth_is_deterministic_and_real_ome(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        wtc11_synth.write_sample(d, seed=5, cells_per_structure=2, z=2, stages=STAGES)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files and all(
        hashlib.sha256((a / f).read_bytes()).digest() == hashlib.sha256((b / f).read_bytes()).digest()
        for f in files
    )
    meta = pd.read_csv(a / "metadata.csv")
    assert set(meta.structure_name) == set(wtc11_synth.SYNTH_STRUCTURES)
    with tifffile.TiffFile(a / meta.crop_raw[0]) as tf:
        assert tf.is_ome and 'Name="structure"' in tf.ome_metadata and "PhysicalSizeZ" in tf.ome_metadata
