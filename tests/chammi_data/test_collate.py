"""Batching by channel set: per-source sub-batches and homogeneous batches."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from chammi_data.format.vocab import SOURCES
from chammi_data.loading.collate import HomogeneousBatcher, collate_homogeneous, group_by_channels


def _sample(source: str, i: int, hw: tuple[int, int] = (8, 8)) -> dict:
    info = SOURCES[source]
    return {
        "image": torch.full((info.num_channels, *hw), float(i)),
        "channels": info.channels,
        "source": source,
        "label": f"{source}-label{i % 2}",
        "cell_id": f"{source}-{i}",
        "meta": {"stream_index": i},
    }


def _mixed(n: int) -> list[dict]:
    order = ["cp", "wtc11", "hpa", "hpa", "cp", "cp", "wtc11"]
    return [_sample(order[i % len(order)], i) for i in range(n)]


def test_group_by_channels_orders_groups_and_keeps_sample_order():
    samples = _mixed(14)
    batches = group_by_channels(samples)
    assert [b["source"] for b in batches] == ["wtc11", "hpa", "cp"]
    for b in batches:
        expected = [s for s in samples if s["source"] == b["source"]]
        assert b["cell_id"] == [s["cell_id"] for s in expected]
        assert b["label"] == [s["label"] for s in expected]
        assert b["meta"] == [s["meta"] for s in expected]
        assert b["channels"] == SOURCES[b["source"]].channels
        assert b["image"].shape == (len(expected), SOURCES[b["source"]].num_channels, 8, 8)
        assert b["image"][:, 0, 0, 0].tolist() == [float(s["cell_id"].split("-")[1]) for s in expected]
    assert sum(len(b["cell_id"]) for b in batches) == 14


def test_same_source_different_channel_sets_are_separate_groups():
    full = _sample("hpa", 0)
    sub = dict(_sample("hpa", 1), image=torch.zeros(2, 8, 8), channels=("nucleus", "protein"))
    batches = group_by_channels([full, sub])
    # Same source: ordered by channel tuple.
    assert [b["channels"] for b in batches] == sorted([full["channels"], sub["channels"]])


def test_collate_errors_name_the_cells():
    a, b = _sample("cp", 0), _sample("cp", 1, hw=(8, 9))
    with pytest.raises(ValueError, match="cp-1.*cp-0"):
        collate_homogeneous([a, b])
    with pytest.raises(ValueError, match="group_by_channels"):
        collate_homogeneous([a, _sample("hpa", 2)])
    with pytest.raises(ValueError, match="hpa-3"):
        collate_homogeneous([dict(_sample("hpa", 3), image=torch.zeros(3, 8, 8))])
    with pytest.raises(ValueError):
        collate_homogeneous([])


def test_dataloader_collate_fn():
    samples = _mixed(10)
    loader = DataLoader(samples, batch_size=5, collate_fn=group_by_channels)
    seen = [cid for groups in loader for b in groups for cid in b["cell_id"]]
    assert sorted(seen) == sorted(s["cell_id"] for s in samples)


def test_homogeneous_batcher_emits_every_sample_once_in_homogeneous_batches():
    samples = _mixed(40)
    batches = list(HomogeneousBatcher(samples, batch_size=4))
    ids = [cid for b in batches for cid in b["cell_id"]]
    assert sorted(ids) == sorted(s["cell_id"] for s in samples)
    for b in batches:
        assert {c.split("-")[0] for c in b["cell_id"]} == {b["source"]}
        # Within a batch samples keep stream order.
        assert b["cell_id"] == sorted(b["cell_id"], key=lambda c: int(c.split("-")[1]))
    sizes = [len(b["cell_id"]) for b in batches]
    n_partial = sum(s < 4 for s in sizes)
    assert n_partial <= 3 and all(s == 4 for s in sizes[: len(sizes) - n_partial])
    again = list(HomogeneousBatcher(samples, batch_size=4))
    assert [b["cell_id"] for b in again] == [b["cell_id"] for b in batches]


def test_homogeneous_batcher_drop_last_and_buffer_limit():
    samples = _mixed(40)
    full = list(HomogeneousBatcher(samples, batch_size=4, drop_last=True))
    assert all(len(b["cell_id"]) == 4 for b in full)
    limited = list(HomogeneousBatcher(samples, batch_size=8, max_buffered=8))
    assert sorted(c for b in limited for c in b["cell_id"]) == sorted(s["cell_id"] for s in samples)
    assert any(len(b["cell_id"]) < 8 for b in limited[:-3])  # early flushes happened
    with pytest.raises(ValueError):
        HomogeneousBatcher(samples, batch_size=0)
    with pytest.raises(ValueError):
        HomogeneousBatcher(samples, batch_size=4, max_buffered=2)


def test_homogeneous_batcher_in_a_dataloader():
    samples = _mixed(21)
    loader = DataLoader(HomogeneousBatcher(samples, batch_size=3), batch_size=None)
    batches = list(loader)
    assert sorted(c for b in batches for c in b["cell_id"]) == sorted(s["cell_id"] for s in samples)
    assert all(b["image"].shape[0] == len(b["cell_id"]) for b in batches)
