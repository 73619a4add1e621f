"""Reading an official CHAMMI download: tape folding, read by content, metadata, clear errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from chammi_data.format.schema import make_cell_id
from chammi_data.interop.official_layout import (
    OfficialFormatError,
    chw_to_tape,
    iter_official_cells,
    read_image_by_content,
    read_official_metadata,
    tape_to_chw,
)


def test_tape_fold_is_column_major():
    chw = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    tape = chw_to_tape(chw)
    assert tape.shape == (4, 15)
    np.testing.assert_array_equal(tape[:, 5:10], chw[1])  # channel k in columns [k*W, (k+1)*W)
    # the release description: fold back column-major
    np.testing.assert_array_equal(np.reshape(tape, (4, 5, 3), order="F").transpose(2, 0, 1), chw)
    np.testing.assert_array_equal(tape_to_chw(tape, 5), chw)
    with pytest.raises(ValueError, match="multiple"):
        tape_to_chw(tape, 4)


def test_reads_by_content(tmp_path: Path):
    tape = (np.arange(6 * 8) % 251).astype(np.uint8).reshape(6, 8)
    import tifffile

    tifffile.imwrite(tmp_path / "really_tiff.png", tape)
    Image.fromarray(tape).save(tmp_path / "really_png.tif", format="PNG")
    big = (np.arange(6 * 8, dtype=np.uint16) * 1000).reshape(6, 8)
    Image.fromarray(big).save(tmp_path / "sixteen.png", format="PNG")
    np.testing.assert_array_equal(read_image_by_content(tmp_path / "really_tiff.png"), tape)
    np.testing.assert_array_equal(read_image_by_content(tmp_path / "really_png.tif"), tape)
    out = read_image_by_content(tmp_path / "sixteen.png")
    assert out.dtype == np.uint16 and np.array_equal(out, big)
    Image.new("RGB", (4, 4)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="grayscale"):
        read_image_by_content(tmp_path / "rgb.png")


def test_cells_match_the_written_ones(official_download: Path, cell_factory):
    from tests.conftest import TINY_N, TINY_SEED

    meta = read_official_metadata(official_download)
    assert set(meta) == {"wtc11", "hpa", "cp"} and len(meta["hpa"]) == TINY_N
    assert meta["cp"]["Task_four"].dtype == bool and meta["cp"]["Task_four"].any()
    for source in ("wtc11", "cp"):
        original = cell_factory(source, TINY_N, seed=TINY_SEED[source])
        cells = list(iter_official_cells(official_download, source, metadata=meta[source]))
        for a, b in zip(original, cells, strict=True):
            np.testing.assert_array_equal(a.image, b.image)
            assert (a.label, a.split, a.tasks, a.groups) == (b.label, b.split, b.tasks, b.groups)
            assert b.cell_id == make_cell_id(source, b.meta["file_path"])
            assert b.channels == a.channels and b.meta["ID"] == a.cell_id  # every original column kept
    sub = list(iter_official_cells(official_download, "hpa", rows=[3, 1]))
    assert [c.meta["file_path"] for c in sub] == meta["hpa"]["file_path"].iloc[[3, 1]].tolist()


def test_merged_csv_fallback(official_download: Path, tmp_path: Path):
    root = tmp_path / "dl"
    shutil.copytree(official_download, root)
    parts = []
    for folder in ("Allen", "HPA", "CP"):
        df = pd.read_csv(root / folder / "enriched_meta.csv")
        (root / folder / "enriched_meta.csv").unlink()
        parts.append(df.assign(chunk=folder))
    pd.concat(parts).to_csv(root / "combined_meta.csv", index=False)
    meta = read_official_metadata(root)
    assert {k: len(v) for k, v in meta.items()} == {"wtc11": 24, "hpa": 24, "cp": 24}
    assert len(list(iter_official_cells(root, "CP", rows=[0]))) == 1


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda df: df.assign(channel_width=7), "channel_width 7"),
        (lambda df: df.assign(channel_width=8), "folds into 8 channels"),
        (lambda df: df.assign(train_test_split="Validation"), "Validation"),
        (lambda df: df.assign(Task_two="perhaps"), "not a boolean"),
        (lambda df: df.assign(file_path="../../etc/passwd"), "relative path"),
        (lambda df: df.assign(file_path="HPA/missing.png"), "not found"),
        (lambda df: df.drop(columns="Label"), "missing column"),
        (lambda df: df.drop(columns="Task_three"), "task column"),
    ],
)
def test_errors_name_the_row(official_download: Path, tmp_path: Path, edit, match):
    root = tmp_path / "dl"
    shutil.copytree(official_download, root)
    csv = root / "HPA" / "enriched_meta.csv"
    edit(pd.read_csv(csv)).to_csv(csv, index=False)
    with pytest.raises((OfficialFormatError, ValueError), match=match) as err:
        list(iter_official_cells(root, "hpa"))
    assert "HPA" in str(err.value)


def test_no_download(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="enriched_meta.csv"):
        read_official_metadata(tmp_path)
