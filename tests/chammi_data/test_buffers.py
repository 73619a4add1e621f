"""Pooled decode buffers and memory-mapped shards: faster reads must never hand out memory that is still in
use, and a shard changed under a reader must still give an error, not a crash or wrong pixels."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import chammi_data
from chammi_data.format import buffers
from chammi_data.format.manifest import read_manifest
from chammi_data.format.shards import ShardFormatError, ShardReader
from chammi_data.store.storage import open_store


def test_a_pooled_buffer_is_reused_only_after_its_last_view_is_gone():
    nbytes = 3 << 20  # a size no other test decodes
    a = buffers.pooled_empty(nbytes)
    a[:] = 7
    address = a.ctypes.data
    view = a[10:].view(np.uint16)
    tensor = torch.from_numpy(view)
    del a, view
    b = buffers.pooled_empty(nbytes)  # the tensor still holds the first buffer
    assert b.ctypes.data != address
    b[:] = 1
    assert int(tensor[0]) == 0x0707  # untouched
    del tensor
    c = buffers.pooled_empty(nbytes)
    assert c.ctypes.data == address  # given back, then reused
    del b, c
    assert buffers.idle_bytes() <= buffers.POOL_BYTES


def test_a_full_pool_makes_room_for_the_size_in_use(monkeypatch):
    monkeypatch.setattr(buffers, "POOL_BYTES", 4 << 20)
    old = [buffers.pooled_empty(1 << 20) for _ in range(4)]
    del old  # the pool is full of 1 MB buffers
    a = buffers.pooled_empty(2 << 20)
    address = a.ctypes.data
    del a  # evicts two idle 1 MB buffers to keep this one
    assert buffers.pooled_empty(2 << 20).ctypes.data == address


def test_samples_from_a_pooled_decode_stay_intact_while_held(tmp_path: Path):
    """Holding every decoded image (256 KB each: pooled) while more are decoded: none is overwritten."""
    from chammi_data.format.writer import ReleaseWriter
    from tests.conftest import make_cells

    writer = ReleaseWriter(tmp_path / "rel", cells_per_shard=4, progress=False)
    writer.add_source("hpa", make_cells("hpa", 8, seed=3, hw=(256, 256)))
    writer.close()
    ds = chammi_data.load("all", root=tmp_path / "rel")
    assert ds.read_array(0).nbytes >= buffers.MIN_POOLED
    held = [ds.read_array(i) for i in range(len(ds))]
    copies = [h.copy() for h in held]
    for _ in range(3):
        for i in range(len(ds)):
            ds.read_array(i)
    for h, c in zip(held, copies, strict=True):
        np.testing.assert_array_equal(h, c)


def test_a_shard_truncated_under_a_mapped_reader_is_an_error(tiny_release: Path, tmp_path: Path):
    root = tmp_path / "rel"
    shutil.copytree(tiny_release, root)
    m = read_manifest(root)
    rows = m[m["source"] == "cp"].to_dict("records")
    reader = ShardReader(open_store(root))
    first = reader.read(rows[0])  # the shard is mapped now
    last = max((r for r in rows if r["shard"] == rows[0]["shard"]), key=lambda r: r["offset"])
    with open(root / last["shard"], "r+b") as fh:
        fh.truncate(int(last["offset"]) + 10)  # in place, under the map
    with pytest.raises(ShardFormatError, match=rf"key '{last['key']}'.*truncated"):
        reader.read(last)
    np.testing.assert_array_equal(reader.read(rows[0]), first)
    clone = pickle.loads(pickle.dumps(reader))  # maps are per process: a pickled reader makes its own
    np.testing.assert_array_equal(clone.read(rows[0]), first)
