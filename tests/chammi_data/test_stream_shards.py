"""Shard-sequential streaming, uint8 batches with device-side augmentation, persistent workers."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import chammi_data.loading.stream_order as so
from chammi_data.augment.device import DeviceTransform
from chammi_data.augment.transforms import train_transform
from chammi_data.loading.collate import group_by_channels, group_by_channels_uint8
from chammi_data.loading.stream_tracker import StreamTracker
from chammi_data.loading.streaming import ShardStream, stream
from chammi_data.store.storage import ReleaseStore


def _ids(batches) -> list[str]:
    return [c for groups in batches for b in groups for c in b["cell_id"]]


def _loader(st, workers: int, batch: int, collate=group_by_channels, persistent: bool = False):
    return DataLoader(
        st,
        batch_size=batch,
        num_workers=workers,
        collate_fn=collate,
        drop_last=False,
        persistent_workers=persistent,
    )


@pytest.mark.parametrize("world,workers", [(1, 1), (1, 2), (2, 2), (3, 1)])
def test_every_sample_once_equal_counts_per_rank(tiny_release, world, workers):
    n = len(stream(tiny_release, split="all", order="shards"))
    per_rank = []
    seen: Counter[str] = Counter()
    for r in range(world):
        st = stream(
            tiny_release,
            split="all",
            order="shards",
            seed=1,
            rank=r,
            world_size=world,
            worker_block=4,
            buffer=8,
        )
        got = [s["meta"]["stream_index"] for b in _loader(st, workers, 4) for g in b for s in _unbatch(g)]
        per_rank.append(len(got))
        seen.update(got)
    assert len(set(per_rank)) == 1
    assert set(seen) >= set(range(n)) and sum(seen.values()) == per_rank[0] * world
    assert sum(seen.values()) - n < world  # only wrap-around padding repeats


def _unbatch(group):
    return [{"meta": m, "cell_id": c} for m, c in zip(group["meta"], group["cell_id"], strict=True)]


def test_shard_runs_are_read_in_one_request_each(tiny_release, monkeypatch):
    calls = []
    real = ReleaseStore.read_range_view  # the shard-run read-ahead's read (no copy of the bytes)

    def counting(self, rel, offset, length):
        calls.append((rel, offset, length))
        return real(self, rel, offset, length)

    monkeypatch.setattr(ReleaseStore, "read_range_view", counting)
    st = stream(tiny_release, split="all", order="shards", seed=4, buffer=16)
    samples = list(st)
    assert len(samples) == st.num_samples == 72
    assert len(calls) == 9 and len({c[0] for c in calls}) == 9  # one read per shard, every shard once
    exact = list(stream(tiny_release, split="all", order="exact", seed=4))
    assert sorted(s["cell_id"] for s in samples) == sorted(s["cell_id"] for s in exact)
    assert [s["cell_id"] for s in samples] != [s["cell_id"] for s in exact]


def test_buffer_order_is_a_bounded_shuffle():
    part = np.arange(1000)
    out = so.buffer_order(part, 50, seed=0, epoch=0, rank=0, worker=0)
    assert sorted(out.tolist()) == part.tolist() and not np.array_equal(out, part)
    # a sample leaves at most when the buffer is full: emitted index k comes from the first k + 50 read
    assert all(p < k + 50 for k, p in enumerate(out.tolist()))
    assert np.array_equal(out, so.buffer_order(part, 50, seed=0, epoch=0, rank=0, worker=0))
    assert not np.array_equal(out, so.buffer_order(part, 50, seed=0, epoch=1, rank=0, worker=0))


@pytest.mark.parametrize("stop_after", [3, 4, 5])
def test_resume_continues_exactly_with_the_same_topology(tiny_release, stop_after):
    def make():
        return stream(
            tiny_release,
            split="train",
            order="shards",
            seed=7,
            worker_block=4,
            buffer=8,
            workers=2,
            drop_last=True,
        )

    full = _ids(_loader(make(), 2, 4))
    st, tracker = make(), StreamTracker()
    got = []
    for k, groups in enumerate(_loader(st, 2, 4)):
        if k == stop_after:
            break
        tracker.update(groups)
        got += [c for b in groups for c in b["cell_id"]]
    state = st.state_dict(seen=tracker.positions(0))
    resumed = make()
    resumed.load_state_dict(state)
    rest = _ids(_loader(resumed, 2, 4))
    assert got + rest == full


def test_resume_with_another_topology_gives_exactly_the_rest(tiny_release):
    st, tracker = (
        stream(tiny_release, split="all", order="shards", seed=2, worker_block=4, workers=2),
        StreamTracker(),
    )
    first = []
    for k, groups in enumerate(_loader(st, 2, 4)):
        if k == 5:
            break
        tracker.update(groups)
        first += [c for b in groups for c in b["cell_id"]]
    state = st.state_dict(seen=tracker.positions(0))
    rest = []
    for r in range(2):
        other = stream(
            tiny_release, split="all", order="shards", seed=2, worker_block=3, rank=r, world_size=2
        )
        other.load_state_dict(state)
        rest += _ids(_loader(other, 1, 3))
    everything = [s["cell_id"] for s in stream(tiny_release, split="all", order="exact")]
    assert len(first) == 20 and sorted(first + rest) == sorted(everything)  # 52 left: no padding for 2 ranks


def test_advance_is_exact_order_only(tiny_release):
    with pytest.raises(ValueError, match="StreamTracker"):
        stream(tiny_release, order="shards").advance(4)


@pytest.mark.parametrize("order", ["exact", "shards"])
def test_uint8_batches_with_device_transform_equal_the_float_path(tiny_release, order):
    def transform():
        return train_transform(12, hflip=0.5, tps_p=0.5)

    kw = dict(split="train", order=order, seed=9, worker_block=4)
    float_st = stream(tiny_release, transform=transform(), **kw)
    u8 = stream(tiny_release, output="uint8", **kw)
    device = DeviceTransform(transform())
    a = [g for b in _loader(float_st, 2, 4) for g in b]
    b = [device(g, "cpu") for batch in _loader(u8, 2, 4, collate=group_by_channels_uint8) for g in batch]
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x["cell_id"] == y["cell_id"] and torch.equal(x["image"], y["image"])
    raw = next(iter(_loader(u8, 0, 4, collate=group_by_channels_uint8)))
    assert all(g["image"].dtype == torch.uint8 for g in raw)


def test_persistent_workers_follow_set_epoch_and_resume(tiny_release):
    st = stream(tiny_release, split="all", order="shards", seed=3, worker_block=4, workers=2)
    loader = _loader(st, 2, 4, persistent=True)
    epochs = []
    for e in range(2):
        st.set_epoch(e)
        epochs.append(_ids(loader))
    fresh = []
    for e in range(2):
        s2 = stream(tiny_release, split="all", order="shards", seed=3, worker_block=4, workers=2)
        s2.set_epoch(e)
        fresh.append(_ids(_loader(s2, 2, 4)))
    assert epochs == fresh and epochs[0] != epochs[1]
    # a state loaded into the main copy reaches the persistent workers too
    state = ShardStream(
        tiny_release, split="all", order="shards", seed=3, worker_block=4, workers=2
    ).state_dict(consumed=40)
    st.load_state_dict({**state, "epoch": 1})
    assert len(_ids(loader)) == 72 - 40
