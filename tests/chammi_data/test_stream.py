"""Streaming: global order, ranks x workers, equal counts, resume with another world size, bad shards."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from chammi_data.augment.transforms import train_transform
from chammi_data.format.codec import CorruptSampleError
from chammi_data.format.manifest import read_manifest
from chammi_data.format.release_format import select_rows
from chammi_data.loading.collate import HomogeneousBatcher, group_by_channels
from chammi_data.loading.dataset import load
from chammi_data.loading.stream_tracker import StreamTracker
from chammi_data.loading.streaming import ShardStream, sample_seed, stream


def _positions(samples) -> list[int]:
    return [s["meta"]["stream_index"] for s in samples]


def _run_loader(st: ShardStream, num_workers: int) -> list[dict]:
    """Samples of one pass through a real DataLoader (batches of 4 split per channel set)."""
    loader = DataLoader(st, batch_size=4, num_workers=num_workers, collate_fn=group_by_channels)
    out = []
    for groups in loader:
        for b in groups:
            out += [
                {"cell_id": c, "meta": m, "image": im}
                for c, m, im in zip(b["cell_id"], b["meta"], b["image"], strict=True)
            ]
    return out


def test_select_rows_splits(tiny_release):
    m = read_manifest(tiny_release)
    assert len(select_rows(m, "all")) == len(m)
    train = select_rows(m, "train")
    assert (train["train_test_split"] == "Train").all() and len(train) == (
        m["train_test_split"] == "Train"
    ).sum()
    t3 = select_rows(m, "hpa/Task_three")
    assert (
        set(t3["source"]) == {"hpa"}
        and t3["Task_three"].all()
        and len(t3) == (m["Task_three"] & (m["source"] == "hpa")).sum()
    )
    assert set(select_rows(m, "task_four")["source"]) == {"cp"}
    assert set(select_rows(m, "test", sources=["Allen", "cp"])["source"]) == {"wtc11", "cp"}
    cp_train = select_rows(m, "train", sources=["CP"])
    assert set(cp_train["source"]) == {"cp"} and list(cp_train.index) == sorted(cp_train.index)
    with pytest.raises(ValueError, match="unknown split"):
        select_rows(m, "holdout")
    with pytest.raises(ValueError, match="wtc11 has no Task_four"):
        select_rows(m, "wtc11/Task_four")
    with pytest.raises(ValueError, match="selects no cells"):
        select_rows(m, "Task_four", sources=["hpa"])


def test_samples_match_manifest_and_order(tiny_release):
    st = stream(tiny_release, split="all", seed=3)
    m = read_manifest(tiny_release)
    samples = list(st)
    perm = st.order()
    assert len(samples) == st.num_samples == len(m)
    assert _positions(samples) == list(range(len(m)))
    for pos, s in zip(range(len(m)), samples, strict=True):
        row = m.iloc[s["meta"]["manifest_row"]]
        assert s["meta"]["manifest_row"] == perm[pos]  # selection "all" = manifest order
        assert s["cell_id"] == row["cell_id"] and s["label"] == row["label"] and s["source"] == row["source"]
        assert s["channels"] == tuple(row["channels"].split(","))
        assert s["image"].dtype == torch.float32 and s["image"].shape == (
            len(s["channels"]),
            row["height"],
            row["width"],
        )
        assert 0.0 <= s["image"].min() and s["image"].max() <= 1.0
    # the same cell is the same tensor, bit for bit, through stream() and load()
    by_id = {s["cell_id"]: s["image"] for s in samples}
    ds = load("all", root=tiny_release)
    for i in range(len(ds)):
        item = ds[i]
        assert torch.equal(by_id[item["cell_id"]], item["image"])


def test_two_ranks_two_workers_see_every_sample_once(tiny_release):
    seen: list[int] = []
    per_rank = []
    for rank in range(2):
        st = stream(tiny_release, split="all", seed=1, rank=rank, world_size=2)
        st.set_epoch(2)
        got = _run_loader(st, num_workers=2)
        per_rank.append(len(got))
        seen += _positions(got)
        ids = [s["cell_id"] for s in got]
        assert len(ids) == len(set(ids))
    n = stream(tiny_release, split="all").num_samples
    assert sorted(seen) == list(range(n))
    assert per_rank == [n // 2, n // 2]


def test_epochs_and_seeds(tiny_release):
    st = stream(tiny_release, split="train", seed=7)
    e0 = [s["cell_id"] for s in st]
    st.set_epoch(1)
    e1 = [s["cell_id"] for s in st]
    assert sorted(e0) == sorted(e1) and e0 != e1
    again = stream(tiny_release, split="train", seed=7)
    assert [s["cell_id"] for s in again] == e0
    other = stream(tiny_release, split="train", seed=8)
    assert [s["cell_id"] for s in other] != e0
    plain = stream(tiny_release, split="train", shuffle=False)
    assert [s["meta"]["manifest_row"] for s in plain] == sorted(s["meta"]["manifest_row"] for s in plain)


@pytest.mark.parametrize("drop_last", [False, True])
def test_equal_counts_per_rank_when_not_divisible(tiny_release, drop_last):
    n = stream(tiny_release, split="train").num_samples
    world = 4
    assert n % world != 0, "fixture changed: pick a world size that does not divide N"
    counts, union = [], set()
    for rank in range(world):
        st = stream(tiny_release, split="train", rank=rank, world_size=world, drop_last=drop_last)
        pos = _positions(st)
        counts.append(len(pos))
        assert len(st) == len(pos)
        union |= {p % n for p in pos}
    expected = n // world if drop_last else -(-n // world)
    assert counts == [expected] * world
    assert len(union) == (n - n % world if drop_last else n)


def test_resume_with_another_world_size_continues_the_global_order(tiny_release):
    n = stream(tiny_release, split="all").num_samples
    # Run 1: two ranks, in lockstep, stop after k = 2 x 9 samples of the global order.
    tracker = StreamTracker()
    ranks = [iter(stream(tiny_release, split="all", seed=5, rank=r, world_size=2)) for r in range(2)]
    for _ in range(9):
        for it in ranks:
            tracker.update(next(it))
    first = stream(tiny_release, split="all", seed=5, rank=0, world_size=2)
    state = first.state_dict(seen=tracker.positions(0))
    assert state["consumed"] == 18 and state["ahead"] == []
    order = [s["cell_id"] for s in stream(tiny_release, split="all", seed=5)]
    # Run 2: three ranks with two DataLoader workers each.
    seen: dict[int, str] = {}
    counts = []
    for rank in range(3):
        st = stream(tiny_release, split="all", seed=0, rank=rank, world_size=3)
        st.load_state_dict(state)
        st.set_epoch(0)  # same epoch: must not reset the resumed position
        got = _run_loader(st, num_workers=2)
        counts.append(len(got))
        for s in got:
            seen[s["meta"]["stream_index"]] = s["cell_id"]
    assert len(set(counts)) == 1
    rest = sorted(p for p in seen if p < n)
    assert rest == list(range(18, n))
    assert [seen[p] for p in rest] == order[18:]
    assert all(p >= n for p in set(seen) - set(rest))  # only wrap-around padding beyond N


def test_uneven_progress_is_tracked_exactly(tiny_release):
    # Rank 0 got 5 samples, rank 1 only 3 (e.g. buffered in a HomogeneousBatcher): prefix 7, position 8 ahead.
    tracker = StreamTracker()
    for rank, k in ((0, 5), (1, 3)):
        it = iter(stream(tiny_release, split="all", rank=rank, world_size=2))
        for _ in range(k):
            tracker.update(next(it))
    st = stream(tiny_release, split="all")
    state = st.state_dict(seen=tracker.positions(0))
    assert state["consumed"] == 7 and state["ahead"] == [8]
    resumed = stream(tiny_release, split="all")
    resumed.load_state_dict(state)
    after = _positions(resumed)
    before = tracker.positions(0)
    assert sorted(before + after) == list(range(st.num_samples))


def test_advance_matches_tracker_with_batch_aligned_workers(tiny_release):
    batch, workers = 3, 2
    st = stream(tiny_release, split="all", seed=2, worker_block=batch)
    tracker = StreamTracker()
    loader = DataLoader(st, batch_size=batch, num_workers=workers, collate_fn=group_by_channels)
    for step, groups in enumerate(loader, start=1):
        tracker.update(groups)
        st.advance(batch)  # world size 1: one step consumes `batch` global samples
        if step == 5:
            break
    assert st.state_dict()["consumed"] == 15
    assert st.state_dict(seen=tracker.positions(0)) == st.state_dict()
    st.advance(10_000)
    assert st.state_dict()["consumed"] == st.num_samples and len(st) == 0


def test_augmentation_independent_of_worker_count(tiny_release):
    tf = train_transform(size=8, tps_p=0.5)
    by_pos = {}
    for workers in (0, 2):
        st = stream(tiny_release, split="train", seed=4, transform=tf)
        for s in _run_loader(st, num_workers=workers):
            p = s["meta"]["stream_index"]
            if p in by_pos:
                assert torch.equal(by_pos[p], s["image"])
            else:
                by_pos[p] = s["image"]
    assert len(by_pos) == stream(tiny_release, split="train").num_samples
    assert sample_seed(4, 0, 1) != sample_seed(4, 0, 2) != sample_seed(4, 1, 1)


def test_user_transform_without_generator_is_seeded(tiny_release):
    def noisy(sample):
        return dict(sample, image=sample["image"] + torch.rand(()))

    a = [s["image"] for s in stream(tiny_release, split="train", transform=noisy)]
    torch.manual_seed(123)  # the global RNG must not matter
    b = [s["image"] for s in stream(tiny_release, split="train", transform=noisy)]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_homogeneous_batcher_over_stream(tiny_release):
    st = stream(tiny_release, split="all", seed=9)
    batcher = HomogeneousBatcher(st, batch_size=5)
    batches = list(DataLoader(batcher, batch_size=None, num_workers=2))
    ids = [c for b in batches for c in b["cell_id"]]
    assert sorted(ids) == sorted(s["cell_id"] for s in st)
    batcher.set_epoch(1)
    assert st.epoch == 1 and batcher.state_dict()["epoch"] == 1


def test_state_mismatch_and_bad_arguments(tiny_release):
    state = stream(tiny_release, split="train").state_dict()
    with pytest.raises(ValueError, match="different selection"):
        stream(tiny_release, split="test").load_state_dict(state)
    with pytest.raises(ValueError, match="invalid rank"):
        stream(tiny_release, rank=2, world_size=2)
    with pytest.raises(ValueError, match="advance"):
        stream(tiny_release).advance(-1)


def test_missing_release_says_how_to_build(tmp_path):
    with pytest.raises(FileNotFoundError, match="chammi-build"):
        stream(tmp_path / "nothing")


def test_truncated_shard_names_shard_and_key(tiny_release_copy):
    m = read_manifest(tiny_release_copy)
    last = m.iloc[int(np.argmax(m["offset"].to_numpy()))]
    path = tiny_release_copy / last["shard"]
    path.write_bytes(path.read_bytes()[: int(last["offset"]) + 10])
    st = stream(tiny_release_copy, split="all", shuffle=False)
    with pytest.raises(CorruptSampleError, match=f"{last['shard']}.*{last['key']}"):
        list(st)


def test_package_level_entry_point(tiny_release):
    import chammi_data

    # The package attribute is the function, also after the implementing module has been imported.
    import chammi_data.loading.streaming  # noqa: F401

    assert callable(chammi_data.stream) and chammi_data.stream is stream
    a = chammi_data.stream(tiny_release, split="train", seed=1)
    b = chammi_data.stream(tiny_release, split="train", seed=1)
    assert isinstance(a, ShardStream) and isinstance(b, ShardStream)
    assert a.fingerprint == b.fingerprint


def test_resume_after_homogeneous_batches_is_exactly_once(tiny_release):
    # Buffering per channel set reorders samples; the tracker still gives an exact resume point.
    st = stream(tiny_release, split="all", seed=6)
    loader = DataLoader(HomogeneousBatcher(st, batch_size=4), batch_size=None, num_workers=2)
    tracker = StreamTracker()
    for i, batch in enumerate(loader):
        tracker.update(batch)
        if i == 6:
            break
    state = st.state_dict(seen=tracker.positions(0))
    assert state["consumed"] < 28 and state["ahead"]  # reordering left holes: some positions ahead
    resumed = stream(tiny_release, split="all", seed=6, rank=1, world_size=2)
    resumed.load_state_dict(state)
    other = stream(tiny_release, split="all", seed=6, rank=0, world_size=2)
    other.load_state_dict(state)
    after = [p for p in _positions(resumed) + _positions(other) if p < st.num_samples]
    assert sorted(tracker.positions(0) + after) == list(range(st.num_samples))


def test_tracker_accepts_default_collate_and_clears(tiny_release):
    st = stream(tiny_release, split="train", sources=["cp"], seed=2)
    tracker = StreamTracker()
    for batch in DataLoader(st, batch_size=3):  # one source: torch's default_collate works
        tracker.update(batch)
    assert tracker.positions(0) == list(range(st.num_samples))
    tracker.clear(0)
    assert tracker.positions(0) == []
    with pytest.raises(KeyError, match="stream_index"):
        tracker.update({"meta": {"other": 1}})


def test_direct_sample_read_is_reproducible(tiny_release):
    st = stream(tiny_release, split="train", transform=train_transform(size=8))
    a, b = st.sample(3), st.sample(3)
    assert a["meta"]["stream_index"] == -1 and torch.equal(a["image"], b["image"])
    assert a["image"].shape[-2:] == (8, 8)
