"""Release writer: round trip, byte-identical rebuilds, tar layout, zarr sharding, concurrent shards."""

from __future__ import annotations

import filecmp
import json
import tarfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import chammi_data.format.zarr_store as zarr_store
from chammi_data.format.manifest import read_manifest, read_release_json, source_rows
from chammi_data.format.release_format import MANIFEST_COLUMNS, canonical_json
from chammi_data.format.shards import ShardReader, iter_samples
from chammi_data.format.vocab import SOURCE_KEYS
from chammi_data.format.writer import (
    ReleaseWriter,
    create_zarr_array,
    file_sha256,
    finalize_release,
    shard_relpath,
    write_shard,
)
from chammi_data.store.storage import open_store


def _build(root: Path, cell_factory, per: int = 10) -> Path:
    w = ReleaseWriter(root, cells_per_shard=per, config={"k": 1})
    for s in SOURCE_KEYS:
        w.add_source(s, iter(cell_factory(s, 13, seed=5)))  # an iterator: streaming, no len()
    return w.close()


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_round_trip_arrays_and_metadata(tiny_release: Path, cell_factory):
    from tests.conftest import TINY_N, TINY_SEED

    m = read_manifest(tiny_release)
    assert list(m.columns) == list(MANIFEST_COLUMNS)
    assert list(dict.fromkeys(m["source"])) == list(SOURCE_KEYS)
    reader = ShardReader(open_store(tiny_release))
    for s in SOURCE_KEYS:
        cells = cell_factory(s, TINY_N, seed=TINY_SEED[s])
        rows = source_rows(m, s)
        assert rows["cell_id"].tolist() == [c.cell_id for c in cells]
        z = zarr_store.open_images(tiny_release, s)
        assert z.shape == (TINY_N, *cells[0].image.shape)
        for c, (_, row) in zip(cells, rows.iterrows(), strict=True):
            np.testing.assert_array_equal(reader.read(row, verify=True), c.image)
            np.testing.assert_array_equal(np.asarray(z[row["zarr_row"]]), c.image)
            assert row["label"] == c.label and row["train_test_split"] == c.split
            assert {t for t in ("Task_one", "Task_two", "Task_three", "Task_four") if row[t]} == set(c.tasks)
            assert json.loads(row["meta"]) == json.loads(canonical_json(c.meta))
            for g, v in c.groups.items():
                assert row[g] == v
        assert "cell_ids" not in zarr_store.read_attrs(tiny_release, s)  # the manifest indexes the rows


def test_rebuild_is_byte_identical(tmp_path: Path, cell_factory):
    a, b = tmp_path / "a", tmp_path / "b"
    _build(a, cell_factory)
    _build(b, cell_factory)
    files = _tree(a)
    assert files == _tree(b)
    _, mismatch, errors = filecmp.cmpfiles(a, b, files, shallow=False)
    assert mismatch == [] and errors == []


def test_tar_headers_and_offsets(tiny_release: Path):
    m = read_manifest(tiny_release)
    shard = m.iloc[0]["shard"]
    with tarfile.open(tiny_release / shard) as tar:
        members = tar.getmembers()
    assert [x.name.split(".", 1)[1] for x in members[:2]] == ["json", "npy.zst"]
    for x in members:
        assert (x.mtime, x.uid, x.gid, x.uname, x.gname, x.mode) == (0, 0, 0, "", "", 0o644)
    rows = m[m["shard"] == shard]
    assert [x.name for x in members[1::2]] == [k + ".npy.zst" for k in rows["key"]]
    assert [x.offset_data for x in members[1::2]] == rows["offset"].tolist()
    assert [x.size for x in members[1::2]] == rows["nbytes"].tolist()


def test_release_json(tiny_release: Path):
    from tests.conftest import TINY_N

    rel = read_release_json(tiny_release)
    assert rel["counts"]["sources"] == dict.fromkeys(SOURCE_KEYS, TINY_N)
    assert rel["counts"]["tasks"]["cp"]["Task_four"] > 0
    assert rel["manifest_sha256"] == file_sha256(tiny_release / "manifest.parquet")
    for path, digest in rel["shards"].items():
        assert file_sha256(tiny_release / path) == digest
    assert len(rel["shards"]) == 9 and rel["sources"]["hpa"]["cells_per_shard"] == 10


def _write_one(args):
    root, source, k, cells, start = args
    return write_shard(root, source, k, cells, start)


def test_concurrent_shards_in_processes(tmp_path: Path, cell_factory):
    cells = cell_factory("cp", 12, seed=3)
    per = 4
    create_zarr_array(tmp_path, "cp", len(cells), cells[0].channels, (16, 16), np.uint8, per)
    jobs = [(tmp_path, "cp", k, cells[k * per : (k + 1) * per], k * per) for k in range(3)]
    with ProcessPoolExecutor(max_workers=2) as pool:
        records = list(pool.map(_write_one, jobs))
    finalize_release(tmp_path, None, records[::-1], {"x": 1})  # order of records does not matter
    z = zarr_store.open_images(tmp_path, "cp")
    np.testing.assert_array_equal(np.asarray(z[:]), np.stack([c.image for c in cells]))
    m = read_manifest(tmp_path)
    assert m["cell_id"].tolist() == [c.cell_id for c in cells]
    assert [s["cell_id"] for s in iter_samples(tmp_path / shard_relpath("cp", 1))] == [
        c.cell_id for c in cells[4:8]
    ]


def test_write_shard_refuses_misaligned_zarr_rows(tmp_path: Path, cell_factory):
    cells = cell_factory("hpa", 6, seed=1)
    create_zarr_array(tmp_path, "hpa", 6, cells[0].channels, (16, 16), np.uint8, 4)
    with pytest.raises(ValueError, match="zarr_start"):
        write_shard(tmp_path, "hpa", 1, cells[:2], 2)


def test_mixed_tile_sizes_in_a_shard_are_refused(tmp_path: Path, cell_factory):
    cells = cell_factory("hpa", 2, seed=1) + cell_factory("hpa", 2, seed=2, hw=(8, 8))
    create_zarr_array(tmp_path, "hpa", 4, cells[0].channels, (16, 16), np.uint8, 4)
    with pytest.raises(ValueError, match="one tile size"):
        write_shard(tmp_path, "hpa", 0, cells, 0)


def test_uint16_round_trip(tmp_path: Path, cell_factory):
    cells = cell_factory("wtc11", 5, seed=9, dtype=np.uint16)
    w = ReleaseWriter(tmp_path, cells_per_shard=2)
    w.add_source("wtc11", cells)
    w.close()
    m = read_manifest(tmp_path)
    assert set(m["dtype"]) == {"uint16"}
    np.testing.assert_array_equal(ShardReader(open_store(tmp_path)).read(m.iloc[4].to_dict()), cells[4].image)


def test_duplicate_cell_ids_are_refused(tmp_path: Path, cell_factory):
    cells = cell_factory("cp", 3, seed=1)
    w = ReleaseWriter(tmp_path, cells_per_shard=4)
    w.add_source("cp", cells + cells[:1])
    with pytest.raises(ValueError, match="duplicate cell_id"):
        w.close()
