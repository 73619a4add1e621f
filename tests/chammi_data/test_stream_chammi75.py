"""Streaming CHAMMI-75's whole images: guided crops in the workers, bag of channels, epochs, resume, sharding,
and no extra reads for the cells."""

from __future__ import annotations

from collections import Counter
from functools import partial

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from chammi_data import load
from chammi_data.augment.guided_crop import resize_square
from chammi_data.format.shards import MappedShards
from chammi_data.loading.collate import group_by_channels_uint8, split_channels
from chammi_data.loading.stream_tracker import StreamTracker
from chammi_data.loading.streaming import stream
from chammi_data.store.storage import ReleaseStore

SIZE = 32


def _make(release, order="exact", **kw):
    opts = {"split": "train", "seed": 5, "guided_crop": SIZE, "output": "uint8", "order": order, "buffer": 4}
    return stream(release, **{**opts, **kw})


def _key(s):
    return s["cell_id"], s["meta"]["stream_index"], tuple(s["meta"]["crop_box"]), s["image"].tobytes()


@pytest.mark.parametrize("order", ["exact", "shards"])
def test_crops_are_deterministic_inside_the_image_and_differ_between_epochs(c75_release, order):
    whole = {s["cell_id"]: s for s in (load("train", root=c75_release)[i] for i in range(15))}
    a, b = list(_make(c75_release, order)), list(_make(c75_release, order))
    assert len(a) == 15 and [_key(s) for s in a] == [_key(s) for s in b]
    for s in a:
        img = s["image"]
        assert img.dtype == np.uint8 and img.shape == (len(s["channels"]), SIZE, SIZE)
        top, left, side, cell = s["meta"]["crop_box"]
        h, w = whole[s["cell_id"]]["image"].shape[1:]
        assert 0 <= top <= h - side and 0 <= left <= w - side  # inside the image
        cells = whole[s["cell_id"]]["meta"]["centroids"]
        if len(cells) and side < min(h, w):  # centred on one of the image's cells
            x, y = cells[cell]
            assert left <= x < left + side and top <= y < top + side
        assert "centroids" not in s["meta"]  # the cells of the whole image stay with the whole image
    again = _make(c75_release, order)
    again.set_epoch(1)
    other = {s["cell_id"]: s["meta"]["crop_box"] for s in again}
    assert sum(other[s["cell_id"]] != s["meta"]["crop_box"] for s in a) >= 10  # another epoch, other crops


def test_a_crop_equals_cutting_the_whole_image_by_hand(c75_release):
    ds = load("train", root=c75_release)
    by_id = {ds.rows["cell_id"].iloc[i]: i for i in range(len(ds))}
    for s in _make(c75_release):
        i = by_id[s["cell_id"]]
        top, left, side, _ = s["meta"]["crop_box"]
        image = ds.read_array(i)[:, top : top + side, left : left + side]
        np.testing.assert_array_equal(s["image"], resize_square(image, SIZE))


def test_cells_come_in_the_same_read_as_the_pixels(c75_release, monkeypatch):
    calls = []
    real_range, real_view = ReleaseStore.read_range, MappedShards.view

    def counting_range(self, rel, offset, length):
        calls.append(rel)
        return real_range(self, rel, offset, length)

    def counting_view(self, path, offset, nbytes):  # a local read: a view of the memory-mapped shard
        calls.append(path)
        return real_view(self, path, offset, nbytes)

    monkeypatch.setattr(ReleaseStore, "read_range", counting_range)
    monkeypatch.setattr(MappedShards, "view", counting_view)
    crops = list(_make(c75_release, "exact"))
    assert len(calls) == len(crops) == 15  # exact order: one read per image, cells included
    calls.clear()
    st = _make(c75_release, "shards")
    assert len(list(st)) == 15 and len(calls) == len(set(calls)) == len(set(st._shard))  # one per shard run


@pytest.mark.parametrize("order", ["exact", "shards"])
def test_resume_continues_exactly_with_workers(c75_release, order):
    collate = partial(group_by_channels_uint8, bag_of_channels=False)

    def loader(st):
        return DataLoader(st, batch_size=3, num_workers=2, collate_fn=collate, persistent_workers=False)

    def make():
        return _make(c75_release, order, worker_block=3, workers=2, drop_last=True, seed=11)

    def flat(batches):
        return [
            (c, tuple(m["crop_box"]))
            for groups in batches
            for g in groups
            for c, m in zip(g["cell_id"], g["meta"], strict=True)
        ]

    full = flat(loader(make()))
    st, tracker, got = make(), StreamTracker(), []
    for k, groups in enumerate(loader(st)):
        if k == 2:
            break
        tracker.update(groups)
        got += flat([groups])
    resumed = make()
    resumed.load_state_dict(st.state_dict(seen=tracker.positions(0)))
    assert got + flat(loader(resumed)) == full  # the same samples, the same crops


def test_bag_of_channels_gives_one_sample_per_channel_with_its_own_seed(c75_release):
    samples = list(_make(c75_release))
    split = split_channels(samples)
    assert len(split) == sum(len(s["channels"]) for s in samples)
    assert all(s["image"].shape == (1, SIZE, SIZE) and len(s["channels"]) == 1 for s in split)
    first = [s for s in split if s["cell_id"] == samples[0]["cell_id"]]
    for k, s in enumerate(first):
        np.testing.assert_array_equal(s["image"][0], samples[0]["image"][k])
        assert s["meta"]["stream_index"] == samples[0]["meta"]["stream_index"] and s["meta"]["channel"] == k
    assert len({s["meta"]["aug_seed"] for s in first}) == len(first)
    batches = group_by_channels_uint8(samples, bag_of_channels=True)
    assert all(b["image"].shape[1] == 1 and b["image"].dtype == torch.uint8 for b in batches)
    names = Counter(c for s in samples for c in s["channels"])
    assert {b["channels"][0]: len(b["cell_id"]) for b in batches} == dict(names)


def test_ranks_share_the_images_once(c75_release):
    seen = Counter()
    for rank in range(2):
        st = _make(c75_release, rank=rank, world_size=2)
        seen.update(s["meta"]["stream_index"] for s in st)
    assert set(seen) >= set(range(15)) and sum(seen.values()) == 16  # 15 images + one wrap-around pad
