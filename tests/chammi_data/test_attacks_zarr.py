"""Attacks on the zarr side of a release: a zarr read must be bound to its cell as firmly as a tar read.

Each zarr chunk carries a crc32c, which proves its bytes are intact but not that they are THIS cell's bytes,
and a chunk that is absent reads as the array's ``fill_value``. So a deleted shard file (zeros), two swapped
shard files (another cell's pixels) and an edited ``fill_value`` (constant images) all used to come back as
images without an error. Every read is now checked against the manifest's per-row pixel crc32c (the manifest
itself is bound to ``release.json`` by its sha256), and the error names the store, the row and the cell.

The tiny release has 10 cells per zarr shard: shard file ``c/k/0/0/0`` holds rows ``10k .. 10k + 9``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import chammi_data
from chammi_data.format.codec import CorruptSampleError
from chammi_data.format.manifest import read_manifest
from chammi_data.format.writer import ReleaseWriter
from tests.conftest import make_cells


def _shard_file(root: Path, source: str, k: int) -> Path:
    return root / "zarr" / f"{source}.zarr" / "images" / "c" / str(k) / "0" / "0" / "0"


def _zarr_ds(root: Path, source: str = "hpa"):
    return chammi_data.load("all", root=root, sources=source, backend="zarr")


def _cell(root: Path, source: str, row: int) -> str:
    m = read_manifest(root)
    return str(m[(m["source"] == source) & (m["zarr_row"] == row)]["cell_id"].iloc[0])


def _error_pattern(root: Path, source: str, row: int) -> str:
    return rf"{root}/zarr/{source}.zarr: row {row} \(cell '{_cell(root, source, row)}'\)"


def test_a_deleted_shard_file_is_an_error_not_zeros(tiny_release_copy: Path):
    _shard_file(tiny_release_copy, "hpa", 1).unlink()
    ds = _zarr_ds(tiny_release_copy)
    for row in (10, 15, 19):
        with pytest.raises(CorruptSampleError, match=_error_pattern(tiny_release_copy, "hpa", row)) as exc:
            ds.read_array(row)
        assert "is missing" in str(exc.value)
    # the other shards still read, and equal the tar shards' pixels
    tar = chammi_data.load("all", root=tiny_release_copy, sources="hpa")
    for row in (0, 9, 20, 23):
        np.testing.assert_array_equal(ds.read_array(row), tar.read_array(row))


def test_swapped_shard_files_are_an_error_not_another_cells_pixels(tiny_release_copy: Path):
    a, b = _shard_file(tiny_release_copy, "cp", 0), _shard_file(tiny_release_copy, "cp", 1)
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    b.write_bytes(data_a)
    ds = _zarr_ds(tiny_release_copy, "cp")
    for row in (0, 7, 12):
        with pytest.raises(CorruptSampleError, match=_error_pattern(tiny_release_copy, "cp", row)) as exc:
            ds.read_array(row)
        assert "not this cell's pixels" in str(exc.value)
    with pytest.raises(CorruptSampleError, match="not this cell's pixels"):
        ds[3]  # the dataset item as well, not only the raw read


@pytest.mark.parametrize("also_delete", [False, True])
def test_an_edited_fill_value_is_an_error_not_constant_images(tiny_release_copy: Path, also_delete: bool):
    meta_path = tiny_release_copy / "zarr" / "wtc11.zarr" / "images" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["fill_value"] = 7
    meta_path.write_text(json.dumps(meta))
    if also_delete:  # the shard's 10 cells would read as 10 constant images of 7
        _shard_file(tiny_release_copy, "wtc11", 2).unlink()
    ds = _zarr_ds(tiny_release_copy, "wtc11")
    for row in (0, 21):
        with pytest.raises(CorruptSampleError, match=_error_pattern(tiny_release_copy, "wtc11", row)) as exc:
            ds.read_array(row)
        assert "fill_value 7" in str(exc.value)


def test_a_cell_of_zeros_is_read_as_zeros_and_its_missing_shard_is_not(tmp_path: Path):
    """zarr stores an all-zero cell as an absent chunk: reading it gives zeros (correct, and the crc says
    so), while any other absent chunk is an error, never the fill value."""
    cells = make_cells("cp", 6, seed=5)
    cells[1].image[:] = 0
    writer = ReleaseWriter(tmp_path / "rel", cells_per_shard=2, progress=False)
    writer.add_source("cp", cells)
    writer.close()
    root = tmp_path / "rel"
    ds = _zarr_ds(root, "cp")
    assert not ds.read_array(1).any()
    np.testing.assert_array_equal(ds.read_array(0), cells[0].image)
    _shard_file(root, "cp", 0).unlink()  # rows 0 (pixels) and 1 (zeros)
    with pytest.raises(CorruptSampleError, match=_error_pattern(root, "cp", 0)):
        ds.read_array(0)
    assert not _zarr_ds(root, "cp").read_array(1).any()


def test_verified_zarr_reads_cost_one_crc_and_catch_a_forged_crc(tiny_release_copy: Path):
    """``verify=True`` also checks the sha256, so a crc column forged together with release.json and a
    swapped shard is still caught."""
    from tests.chammi_data.test_attacks_read import _rewrite_manifest

    a, b = _shard_file(tiny_release_copy, "hpa", 0), _shard_file(tiny_release_copy, "hpa", 1)
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    b.write_bytes(data_a)
    m = read_manifest(tiny_release_copy)
    hpa = m.index[m["source"] == "hpa"]
    crcs = m.loc[hpa, "crc32c"].to_numpy().copy()
    crcs[:10], crcs[10:20] = crcs[10:20].copy(), crcs[:10].copy()
    m.loc[hpa, "crc32c"] = crcs
    _rewrite_manifest(tiny_release_copy, m)
    assert _zarr_ds(tiny_release_copy).read_array(2) is not None  # the forgery passes the crc binding
    ds = chammi_data.load("all", root=tiny_release_copy, sources="hpa", backend="zarr", verify=True)
    with pytest.raises(CorruptSampleError, match="checksum mismatch"):
        ds.read_array(2)
