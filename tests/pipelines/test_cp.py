"""Cell Painting pipeline: layout parsing, pixel steps, bad input and the synthetic sample, on tmp data."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml

import pipelines.sources.cp.layout as lay
import pipelines.sources.cp.synth as cp_synth
from chammi_data.format.vocab import SOURCES
from chammi_data.store.paths import manifests_dir
from pipelines.sources.base import UnitSkip
from pipelines.sources.cp.pipeline import CPPipeline

CH_NUMS = {"DNA": 3, "ER": 5, "RNA": 1, "AGP": 4, "Mito": 2}  # deliberately not 1..5 in order
MARK_AT = {"DNA": (60, 60), "ER": (60, 140), "RNA": (140, 60), "AGP": (140, 140), "Mito": (100, 100)}


def field_for(ch: str, size: int = 200, seed: int = 0, dtype: type = np.uint16) -> np.ndarray:
    """Noise plus one bright square at a channel-specific place, so a mixed-up channel is visible."""
    rng = np.random.default_rng(seed)
    top = 4000 if dtype == np.uint16 else 250
    img = rng.integers(100 if dtype == np.uint16 else 5, 400 if dtype == np.uint16 else 30, (size, size))
    y, x = MARK_AT[ch]
    img[y - 5 : y + 5, x - 5 : x + 5] = top
    return img.astype(dtype)


def write_plate(
    root: Path,
    plate: str = "P1",
    dataset: str = "LINCS",
    wells: dict[str, str] | None = None,
    positions: list[tuple[float, float]] | None = None,
    dtype: type = np.uint16,
    platemap_wells: dict[str, str] | None = None,
    url: bool = False,
) -> Path:
    """A tiny plate in the documented layout: Phenix names, load_data.csv, per-site Nuclei.csv, platemaps."""
    wells = wells if wells is not None else {"A01": "BRD-K21680192-300-06-1", "A02": ""}
    pdir = root / dataset / plate
    (pdir / "images").mkdir(parents=True)
    rows = []
    for well in wells:
        row = {"Metadata_Plate": plate, "Metadata_Well": well, "Metadata_Site": 1}
        for ch in lay.RAW_CHANNELS:
            name = f"r01c{int(well[1:]):02d}f01p01-ch{CH_NUMS[ch]}sk1fk1fl1.tiff"
            tifffile.imwrite(pdir / "images" / name, field_for(ch, dtype=dtype))
            if url:
                row[f"URL_Orig{ch}"] = f"file://{pdir / 'images' / name}"
            else:
                row[f"FileName_Orig{ch}"], row[f"PathName_Orig{ch}"] = name, "images"
        rows.append(row)
        sdir = pdir / "analysis" / f"{plate}-{well}-1"
        sdir.mkdir(parents=True)
        pos = positions if positions is not None else [(100.0, 100.0), (30.0, 170.0)]
        pd.DataFrame(
            {
                "ImageNumber": 1,
                "ObjectNumber": range(1, len(pos) + 1),
                "Nuclei_Location_Center_X": [x for x, _ in pos],
                "Nuclei_Location_Center_Y": [y for _, y in pos],
            }
        ).to_csv(sdir / "Nuclei.csv", index=False)
    pd.DataFrame(rows).to_csv(pdir / "load_data.csv", index=False)
    pm = root / dataset / "platemaps"
    pm.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"Assay_Plate_Barcode": [plate], "Plate_Map_Name": ["MAP1"]}).to_csv(
        pm / "barcode_platemap.csv", index=False
    )
    pmw = platemap_wells if platemap_wells is not None else wells
    pd.DataFrame(
        {
            "well_position": list(pmw),
            "broad_sample": list(pmw.values()),
            "mmoles_per_liter": 10.0,
            "solvent": "DMSO",
        }
    ).to_csv(pm / "MAP1.txt", sep="\t", index=False)
    return pdir


def opts(**section):
    """CP options: the defaults with ``section`` merged over them."""
    return CPPipeline().options(section)


def discover(root: Path, section: dict | None = None):
    """(units, skipped) of the CP discovery of ``root``."""
    found = CPPipeline().discover(root, opts(**(section or {})))
    return found.units, found.skipped


# ------------------------------------------------------------------------------------------------ layout


def test_label_from_broad_sample():
    assert lay.label_from_broad_sample("BRD-K21680192-300-06-1") == "BRD-K21680192"
    assert lay.label_from_broad_sample("") == "DMSO"
    assert lay.label_from_broad_sample(float("nan")) == "DMSO"
    assert lay.normalise_well("b3") == "B03"


def test_site_unit_channels_follow_load_data(tmp_path):
    write_plate(tmp_path)
    units, skipped = discover(tmp_path)
    assert skipped == [] and [u.unit_id for u in units] == ["cp-LINCS-P1-A01-s1", "cp-LINCS-P1-A02-s1"]
    res = CPPipeline().process(units[0], opts())
    assert res.skipped == [] and len(res.cells) == 2
    cell = res.cells[0]
    assert cell.image.shape == (5, 160, 160) and cell.image.dtype == np.uint8
    assert cell.channels == SOURCES["cp"].channels == ("nucleus", "er", "rna", "golgi", "mito")
    assert cell.label == "BRD-K21680192" and cell.groups == {"Plate": "P1", "dataset": "LINCS"}
    assert cell.meta["well"] == "A01" and cell.meta["row"] == 2 and cell.meta["bit_depth"] == 16
    # the nucleus at (100, 100) is the box centre: each channel's bright square sits where MARK_AT says
    for k, ch in enumerate(lay.RAW_CHANNELS):
        y, x = np.unravel_index(np.argmax(cell.image[k]), cell.image[k].shape)
        assert (abs(y + 20 - MARK_AT[ch][0]) <= 5) and (abs(x + 20 - MARK_AT[ch][1]) <= 5), ch
    assert res.cells[1].label == "BRD-K21680192"
    assert CPPipeline().process(units[1], opts()).cells[0].label == "DMSO"


def test_border_policies(tmp_path):
    write_plate(tmp_path, positions=[(100.0, 100.0), (10.0, 10.0)])
    unit = discover(tmp_path)[0][0]
    pad = CPPipeline().process(unit, opts())
    corner = pad.cells[1]
    assert corner.meta["touched_border"] and corner.image[:, :60, :60].max() == 0  # zero pad outside
    skip = CPPipeline().process(unit, opts(border="skip"))
    assert len(skip.cells) == 1 and len(skip.skipped) == 1
    assert "border" in skip.skipped[0].reason and skip.skipped[0].row == "ObjectNumber 2"
    shift = CPPipeline().process(unit, opts(border="shift"))
    assert len(shift.cells) == 2 and shift.cells[1].image[:, :10, :10].max() > 0


def test_cell_ids_and_pixels_do_not_depend_on_location(tmp_path):
    write_plate(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    ca = CPPipeline().process(discover(tmp_path / "a")[0][0], opts()).cells
    cb = CPPipeline().process(discover(tmp_path / "b")[0][0], opts()).cells
    assert [c.cell_id for c in ca] == [c.cell_id for c in cb]
    assert [c.checksum for c in ca] == [c.checksum for c in cb]
    assert [c.meta for c in ca] == [c.meta for c in cb]  # provenance paths are relative to the input root


def test_url_columns_and_remote_urls(tmp_path):
    pdir = write_plate(tmp_path, url=True)
    units, skipped = discover(tmp_path)
    assert len(units) == 2 and not skipped
    df = pd.read_csv(pdir / "load_data.csv")
    # the Gallery's own form: a channel named by its s3:// URL is read where it is (on the worker)
    df.loc[1, "URL_OrigER"] = "s3://cellpainting-gallery/x.tiff"
    df.loc[0, "URL_OrigRNA"] = "ftp2x://host/x.tiff"  # no such scheme: the row is skipped, naming it
    df.to_csv(pdir / "load_data.csv", index=False)
    units, skipped = discover(tmp_path)
    assert len(units) == 1 and units[0].payload["files"]["ER"] == "s3://cellpainting-gallery/x.tiff"
    assert len(skipped) == 1 and "unsupported URL scheme 'ftp2x'" in skipped[0].reason
    assert skipped[0].row == 2 and skipped[0].file.endswith("load_data.csv")
    # a remote URL or a foreign absolute path whose file name is in images/ uses that local copy
    name = f"r01c02f01p01-ch{CH_NUMS['ER']}sk1fk1fl1.tiff"  # A02's ER file
    df.loc[1, "URL_OrigER"] = f"s3://cellpainting-gallery/cpg0004/{name}"
    df.loc[0, "URL_OrigRNA"] = f"file://{pdir / 'images' / df.loc[0, 'URL_OrigRNA'].rsplit('/', 1)[-1]}"
    df.loc[0, "URL_OrigRNA"] = f"file:///nonexistent/machine/r01c01f01p01-ch{CH_NUMS['RNA']}sk1fk1fl1.tiff"
    df.to_csv(pdir / "load_data.csv", index=False)
    units, skipped = discover(tmp_path)
    assert len(units) == 2 and not skipped
    assert units[1].payload["files"]["ER"] == f"LINCS/P1/images/{name}"  # relative to the input root
    assert (tmp_path / units[0].payload["files"]["RNA"]).is_file()


def test_ixm_names_without_load_data(tmp_path):
    pdir = tmp_path / "BBBC022" / "20585"
    (pdir / "images").mkdir(parents=True)
    for w, ch in lay.IXM_WAVELENGTHS.items():
        tifffile.imwrite(
            pdir / "images" / f"20585_B02_s2_w{w}0A1B2C3D-AAAA-BBBB-CCCC-0123456789AB.tif", field_for(ch)
        )
    pd.DataFrame(
        {
            "Metadata_Plate": ["20585"],
            "Metadata_Well": ["B02"],
            "Metadata_Site": [2],
            "Nuclei_Location_Center_X": [100.0],
            "Nuclei_Location_Center_Y": [100.0],
        }
    ).to_csv(pdir / "Nuclei.csv", index=False)
    pm = tmp_path / "BBBC022" / "platemaps"
    pm.mkdir()
    (pm / "barcode_platemap.csv").write_text("Assay_Plate_Barcode,Plate_Map_Name\n20585,M\n")
    (pm / "M.txt").write_text("well_position\tbroad_sample\tmmoles_per_liter\tsolvent\nB02\t\t0\tDMSO\n")
    units, skipped = discover(tmp_path)
    assert not skipped and [u.unit_id for u in units] == ["cp-BBBC022-20585-B02-s2"]
    cells = CPPipeline().process(units[0], opts()).cells
    assert len(cells) == 1 and cells[0].label == "DMSO" and cells[0].meta["positions"] == "plate_csv"
    y, x = np.unravel_index(np.argmax(cells[0].image[0]), (160, 160))
    assert abs(y + 20 - 60) <= 5 and abs(x + 20 - 60) <= 5  # w1 = DNA


def test_phenix_names_without_load_data_need_channel_numbers(tmp_path):
    pdir = write_plate(tmp_path)
    (pdir / "load_data.csv").unlink()
    units, skipped = discover(tmp_path)
    assert units == [] and "phenix_channels" in skipped[0].reason
    config = {"phenix_channels": {str(v): k for k, v in CH_NUMS.items()}}
    units, skipped = discover(tmp_path, config)
    assert not skipped and len(units) == 2 and units[0].payload["row"] is None
    cell = CPPipeline().process(units[0], opts(**config)).cells[0]
    y, x = np.unravel_index(np.argmax(cell.image[4]), (160, 160))
    assert abs(y + 20 - 100) <= 5 and abs(x + 20 - 100) <= 5  # mito square


# ------------------------------------------------------------------------------------------------ bad input


def test_duplicate_site_rows(tmp_path):
    pdir = write_plate(tmp_path)
    df = pd.read_csv(pdir / "load_data.csv")
    pd.concat([df, df.iloc[[0]]]).to_csv(pdir / "load_data.csv", index=False)
    units, skipped = discover(tmp_path)
    assert len(units) == 2 and len(skipped) == 1
    assert "duplicate site" in skipped[0].reason and skipped[0].row == 4


def test_missing_channel_file(tmp_path):
    pdir = write_plate(tmp_path)
    next((pdir / "images").glob("r01c01f01p01-ch5*")).unlink()  # ER of A01
    units, _ = discover(tmp_path)
    with pytest.raises(UnitSkip) as exc:
        CPPipeline().process(units[0], opts())
    assert (
        "missing channel file(s): ER (r01c01f01p01-ch5sk1fk1fl1.tiff)" in exc.value.reason
        and exc.value.row == 2
    )
    assert exc.value.file.endswith("ch5sk1fk1fl1.tiff")


def _a01(pdir: Path, ch: str) -> Path:
    """The A01 file of raw channel ``ch`` written by :func:`write_plate`."""
    return pdir / "images" / f"r01c01f01p01-ch{CH_NUMS[ch]}sk1fk1fl1.tiff"


def _a01_skip(tmp_path: Path, damage, **options) -> UnitSkip:
    """The skip of site A01 of a sample plate after ``damage(plate folder)``."""
    pdir = write_plate(tmp_path)
    damage(pdir)
    units, _ = discover(tmp_path)
    with pytest.raises(UnitSkip) as exc:
        CPPipeline().process(units[0], opts(**options))
    return exc.value


def test_every_missing_channel_file_is_named(tmp_path):
    skip = _a01_skip(tmp_path, lambda pdir: [_a01(pdir, ch).unlink() for ch in ("ER", "Mito")])
    assert (
        skip.reason == "missing channel file(s): ER (r01c01f01p01-ch5sk1fk1fl1.tiff), Mito "
        "(r01c01f01p01-ch2sk1fk1fl1.tiff)"
    )


def test_size_mismatch_names_the_files_and_sizes(tmp_path):
    skip = _a01_skip(tmp_path, lambda pdir: tifffile.imwrite(_a01(pdir, "RNA"), field_for("RNA", size=150)))
    assert skip.reason == (
        "channel sizes differ from DNA (r01c01f01p01-ch3sk1fk1fl1.tiff) (200x200): "
        "RNA (r01c01f01p01-ch1sk1fk1fl1.tiff) is 150x150"
    )
    assert skip.file.endswith("ch1sk1fk1fl1.tiff")


def test_mixed_bit_depth_is_skipped_unless_allowed(tmp_path):
    skip = _a01_skip(
        tmp_path, lambda pdir: tifffile.imwrite(_a01(pdir, "Mito"), field_for("Mito", dtype=np.uint8))
    )
    assert skip.reason.startswith(
        "mixed bit depths in one field: DNA (r01c01f01p01-ch3sk1fk1fl1.tiff) 16-bit"
    )
    assert (
        "Mito (r01c01f01p01-ch2sk1fk1fl1.tiff) 8-bit" in skip.reason and "cp.mixed_bit_depth" in skip.reason
    )
    cells = CPPipeline().process(discover(tmp_path)[0][0], opts(mixed_bit_depth="allow")).cells
    assert cells[0].meta["bit_depth"] == 16 and cells[0].meta["channel_bit_depths"]["Mito"] == 8


def test_a_tiff_over_the_size_limit_is_not_decoded(tmp_path, monkeypatch):
    monkeypatch.setattr(
        tifffile.TiffFile, "asarray", lambda *a, **k: pytest.fail("decoded before the size check")
    )
    # the header of a 512 MB plane (a sparse file): refused before any plane of the site is decoded
    skip = _a01_skip(
        tmp_path, lambda pdir: tifffile.imwrite(_a01(pdir, "AGP"), shape=(16000, 16000), dtype=np.uint16)
    )
    assert skip.reason == (
        "image too large: r01c01f01p01-ch4sk1fk1fl1.tiff is 16000 x 16000 (256,000,000 "
        "pixels), over cp.max_field_pixels = 100,000,000; not decoded"
    )
    assert skip.file.endswith("ch4sk1fk1fl1.tiff")


def test_nucleus_rows_without_coordinates_are_listed(tmp_path):
    write_plate(tmp_path, positions=[(100.0, 100.0), (float("nan"), 50.0), (30.0, 170.0)])
    units, _ = discover(tmp_path)
    res = CPPipeline().process(units[0], opts())
    assert len(res.cells) == 2 and res.found == {"cells": 3}
    (skip,) = res.skipped
    assert (
        "without coordinates" in skip.reason
        and skip.row == "ObjectNumber 2"
        and skip.file.endswith("Nuclei.csv")
    )


def test_wrong_dims_and_8bit(tmp_path):
    pdir = write_plate(tmp_path, dtype=np.uint8)
    units, _ = discover(tmp_path)
    cells = CPPipeline().process(units[0], opts()).cells
    assert len(cells) == 2 and cells[0].meta["bit_depth"] == 8 and cells[0].image.max() == 255
    tifffile.imwrite(
        next((pdir / "images").glob("r01c02f01p01-ch3*")),
        np.zeros((3, 20, 20), np.uint16),
        photometric="minisblack",
    )
    with pytest.raises(UnitSkip, match="DNA image must be 2-D"):
        CPPipeline().process(units[1], opts())


def test_well_missing_in_platemap(tmp_path):
    write_plate(tmp_path, platemap_wells={"A01": "BRD-K21680192-300-06-1"})
    found = CPPipeline().discover(tmp_path, opts())
    assert found.found == {"plates": 1, "sites": 2} and found.used == {"plates": 1}
    units, skipped = found.units, found.skipped
    assert [u.payload["well"] for u in units] == ["A01"]
    assert len(skipped) == 1 and "well A02" in skipped[0].reason and "MAP1.txt" in skipped[0].reason
    assert skipped[0].row == 3


def test_nan_illumination_and_correction(tmp_path):
    pdir = write_plate(tmp_path)
    (pdir / "illum").mkdir()
    unit = discover(tmp_path)[0][0]
    plain = CPPipeline().process(unit, opts()).cells
    # vignetted raw images + the matching illumination function give back the flat result
    yy, xx = np.mgrid[0:200, 0:200]
    vig = 1.0 - 0.4 * ((yy - 100) ** 2 + (xx - 100) ** 2) / 20000.0
    for ch in lay.RAW_CHANNELS:
        f = tmp_path / unit.payload["files"][ch]
        tifffile.imwrite(f, tifffile.imread(f).astype(np.float64) * vig)
        np.save(pdir / "illum" / f"P1_Illum{ch}.npy", vig)
    unit = discover(tmp_path)[0][0]
    corrected = CPPipeline().process(unit, opts()).cells
    uncorrected = CPPipeline().process(discover(tmp_path, {"illum": False})[0][0], opts()).cells
    diff_c = np.abs(corrected[0].image.astype(int) - plain[0].image).mean()
    diff_u = np.abs(uncorrected[0].image.astype(int) - plain[0].image).mean()
    assert corrected[0].meta["illum"] and diff_c < 0.5 < diff_u
    bad = vig.copy()
    bad[5, 5] = np.nan
    np.save(pdir / "illum" / "P1_IllumMito.npy", bad)
    with pytest.raises(UnitSkip, match="illumination function Mito holds NaN"):
        CPPipeline().process(unit, opts())


def test_site_with_no_nuclei_and_constant_channel(tmp_path):
    pdir = write_plate(tmp_path, positions=[])
    units, _ = discover(tmp_path)
    with pytest.raises(UnitSkip, match="no nuclei") as exc:
        CPPipeline().process(units[0], opts())
    assert exc.value.file.endswith("Nuclei.csv")
    tifffile.imwrite(tmp_path / units[1].payload["files"]["RNA"], np.full((200, 200), 7, np.uint16))
    with pytest.raises(UnitSkip, match="constant image"):
        CPPipeline().process(units[1], opts())
    assert pdir.is_dir()


def test_plate_without_platemap_is_skipped(tmp_path):
    write_plate(tmp_path)
    shutil.rmtree(tmp_path / "LINCS" / "platemaps")
    units, skipped = discover(tmp_path)
    assert units == [] and len(skipped) == 1 and "barcode_platemap.csv" in skipped[0].reason
    assert skipped[0].kind == "plates"


def test_segmentation_fallback(tmp_path):
    pdir = write_plate(tmp_path)
    shutil.rmtree(pdir / "analysis")
    units, _ = discover(tmp_path)
    assert units[0].payload["positions"]["kind"] == "segment"
    cells = CPPipeline().process(units[0], opts()).cells
    centres = {(round(c.meta["nucleus_y"]), round(c.meta["nucleus_x"])) for c in cells}
    assert any(abs(y - 60) <= 3 and abs(x - 60) <= 3 for y, x in centres)  # the DNA square


# ------------------------------------------------------------------------------------------------ sample +
# tasks


def test_rules_agree_with_synthetic_sample():
    rules = yaml.safe_load((manifests_dir() / "tasks" / "cp.yaml").read_text())
    assert rules["novel_plates"] == list(cp_synth.NOVEL_PLATES)
    assert rules["novel_compounds"] == list(cp_synth.NOVEL_COMPOUNDS)
    assert sorted(rules["training_labels"]) == sorted(cp_synth.TRAIN_COMPOUNDS)
    assert rules["iid_test_fraction"] == pytest.approx(13065 / (36360 + 13065), abs=1e-5)


def test_render_site_is_deterministic_and_label_dependent():
    nuisance = {"gain": np.ones(5), "background": 500.0, "noise": 50.0}
    a, ca = cp_synth.render_site(np.random.default_rng(1), "DMSO", 256, 4, nuisance)
    b, cb = cp_synth.render_site(np.random.default_rng(1), "DMSO", 256, 4, nuisance)
    c, _ = cp_synth.render_site(np.random.default_rng(1), "BRD-A29260609", 256, 4, nuisance)
    assert a.dtype == np.uint16 and a.shape == (5, 256, 256) and ca == cb and np.array_equal(a, b)
    assert c[1].mean() > a[1].mean() * 1.2  # acebutolol stand-in: brighter ER


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("cp_sample")
    CPPipeline().synth(root, seed=3, field_size=384)
    pipe = CPPipeline()
    found = pipe.discover(root, pipe.options())
    units, skipped = found.units, found.skipped
    cells = [c for u in units for c in pipe.process(u, pipe.options()).cells]
    return root, units, skipped, cells


@pytest.mark.slow
def test_sample_builds_every_task(sample):
    root, units, skipped, cells = sample
    assert skipped == [] and len(units) == 37
    assert 150 <= len(cells) <= 320
    assert len({c.cell_id for c in cells}) == len(cells)
    assert {c.meta["positions"] for c in cells} == {"site_csv", "plate_csv", "sqlite"}
    assert {c.groups["dataset"] for c in cells} == {"LINCS", "CDRP", "BBBC022"}
    table = pd.DataFrame([{"cell_id": c.cell_id, "label": c.label, **c.groups} for c in cells])
    assigned = table.merge(CPPipeline().assign(table, {}))
    assert (assigned["train_test_split"] != "").all()
    counts = assigned["train_test_split"].value_counts()
    for split in ("Train", "Task_one", "Task_two", "Task_three", "Task_four"):
        assert counts.get(split, 0) >= 15, counts
    t4 = assigned[assigned["Task_four"]]
    assert t4["Plate"].nunique() >= 2 and t4.groupby("label")["Plate"].nunique().min() >= 2
    assert set(assigned.loc[assigned["Task_three"], "dataset"]) == {"BBBC022"}


@pytest.mark.slow
def test_sample_is_deterministic(sample, tmp_path):
    root, units, _, cells = sample
    CPPipeline().synth(tmp_path, seed=3, field_size=384)
    again, _ = discover(tmp_path)
    assert [u.unit_id for u in again] == [u.unit_id for u in units]
    first = CPPipeline().process(again[5], opts()).cells
    ref = [
        c
        for c in cells
        if c.meta["plate"] == again[5].payload["plate"] and c.meta["well"] == again[5].payload["well"]
    ]
    assert [c.checksum for c in first] == [c.checksum for c in ref]


def test_plates_option_reads_and_counts_only_the_named_plates(tmp_path):
    write_plate(tmp_path, "P1")
    write_plate(tmp_path, "P2", "CDRP")
    found = CPPipeline().discover(tmp_path, opts(plates=["P2"]))
    assert {u.payload["plate"] for u in found.units} == {"P2"} and found.found["plates"] == 1
