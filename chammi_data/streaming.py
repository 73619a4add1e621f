"""Deterministic, resumable streaming of a release's tar shards for (distributed) training.

**Global order.** An epoch's order is a permutation ``perm`` of the N selected manifest rows drawn from
``numpy.random.Generator(PCG64(SeedSequence([seed, epoch])))`` only. Position ``i`` of the *extended* order
is row ``perm[i % N]``; positions >= N only occur as wrap-around padding.

**Ranks and workers.** At the start of an iteration the remaining positions ``[consumed, N)`` minus those
already seen ahead (see below) are listed; without ``drop_last`` the list is padded with positions
``N, N+1, ...`` (wrapping around the permutation) to a multiple of the world size W, with ``drop_last`` its
tail is cut to a multiple of W. Rank r takes ``list[r::W]``, so every rank gets the same number of samples
(no collective hangs). DataLoader worker k of K takes blocks of ``worker_block`` consecutive samples of its
rank's slice, block j going to worker ``j % K`` (``worker_block=1``: a strided per-sample slice).

**Progress.** Each sample's ``meta`` holds ``stream_epoch``, ``stream_index`` (its position in the global
order) and ``manifest_row``. ``consumed`` counts samples of the global order as a *prefix*: every position
below it has been consumed. Two ways to record progress from the training process:

1. exact, any batching: a :class:`ProgressTracker` records ``stream_index`` of every sample the trainer
   received (``tracker.update(batch)``); ``stream.state_dict(seen=tracker.positions(epoch))`` (in DDP:
   ``seen=tracker.gather(epoch)``, a collective) stores ``consumed`` = the longest consumed prefix plus
   ``ahead`` = the positions beyond it already consumed, which a resumed stream skips;
2. lockstep shortcut: ``stream.advance(n_global)`` after each optimizer step with ``n_global = steps x batch
   size x W``. It is exact when every rank has received a prefix of its slice, which holds with
   ``worker_block`` = the DataLoader batch size, or with 1 worker, or after multiples of K batches.

After ``load_state_dict`` the union over all ranks of what they yield is the remaining suffix of the same
global order (minus ``ahead``), for any new world size and worker count. Augmentation randomness comes from
a generator seeded by (seed, epoch, position), so it does not depend on ranks or workers either.

**Caveats.** Call ``set_epoch`` before creating the DataLoader iterator of each epoch and keep
``persistent_workers=False``: workers hold a copy of the stream made when the iterator starts. Ranks get
equal *sample* counts; a :class:`~chammi_data.collate.HomogeneousBatcher` on top can still give ranks
different *batch* counts (the channel mix differs), so under DDP prefer ``collate_fn=group_by_channels``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from chammi_data.manifest import read_manifest
from chammi_data.release_format import make_sample, parse_channels, row_meta, select_rows, to_float_tensor
from chammi_data.shards import ShardReader
from chammi_data.storage import open_store
from chammi_data.transforms import accepts_generator
from chammi_data.vocab import TASK_COLUMNS

STATE_VERSION = 1


def sample_seed(seed: int, epoch: int, position: int, *extra: int) -> int:
    """A 63-bit seed for the augmentation of one sample, from (seed, epoch, global position) only."""
    state = np.random.SeedSequence([seed, epoch, position, *extra]).generate_state(1, dtype=np.uint64)[0]
    return int(state) & ((1 << 63) - 1)


def _world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """(rank, world size) from the arguments, else from torch.distributed when initialised, else (0, 1)."""
    if world_size is None or rank is None:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            rank = dist.get_rank() if rank is None else rank
            world_size = dist.get_world_size() if world_size is None else world_size
        else:
            rank, world_size = (rank or 0), (world_size or 1)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"invalid rank {rank} for world size {world_size}")
    return rank, world_size


class ShardStream(IterableDataset):
    """IterableDataset of sample dicts over a release's tar shards; see the module docstring for the order.

    Items: ``{"image": float (C, H, W) in [0, 1], "channels", "source", "label", "cell_id", "meta"}`` after
    ``transform`` (called as ``transform(sample, generator=g)`` when it accepts a generator, else under a
    forked torch RNG seeded the same way). ``len()`` = samples this rank yields in the current state.
    """

    def __init__(
        self,
        root: Any = None,
        split: str = "train",
        sources: Sequence[str] | None = None,
        seed: int = 0,
        transform: Callable[..., dict[str, Any]] | None = None,
        shuffle: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = False,
        worker_block: int = 1,
        storage_options: Mapping[str, Any] | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        self.store = open_store(root, storage_options, cache_dir)
        rows = select_rows(read_manifest(self.store), split, sources, where=f"release {self.store}")
        self.split, self.sources = split, None if sources is None else tuple(sources)
        self.seed, self.shuffle, self.drop_last = int(seed), bool(shuffle), bool(drop_last)
        if worker_block < 1:
            raise ValueError(f"worker_block must be >= 1, got {worker_block}")
        self.worker_block = int(worker_block)
        self.transform = transform
        self._takes_generator = transform is not None and accepts_generator(transform)
        self._rank, self._world_size = rank, world_size
        if rank is not None and world_size is not None:
            _world(rank, world_size)  # fail early on an impossible rank
        # Plain arrays/lists: cheap to fork or pickle into workers, fast to index.
        self._manifest_row = rows.index.to_numpy(dtype=np.int64)
        self._shard = rows["shard"].tolist()
        self._offset = rows["offset"].to_numpy(dtype=np.int64)
        self._nbytes = rows["nbytes"].to_numpy(dtype=np.int64)
        self._key = rows["key"].tolist()
        self._cell_id = rows["cell_id"].tolist()
        self._source = rows["source"].tolist()
        self._label = rows["label"].tolist()
        self._meta = rows["meta"].tolist()
        self._split = rows["train_test_split"].tolist()
        self._tasks = rows[list(TASK_COLUMNS)].to_numpy(dtype=bool)
        self._zarr_row = rows["zarr_row"].to_numpy(dtype=np.int64)
        self._channels = [parse_channels(c) for c in rows["channels"]]
        self._height = rows["height"].to_numpy(dtype=np.int64)
        self._width = rows["width"].to_numpy(dtype=np.int64)
        self._dtype = rows["dtype"].tolist()
        self.fingerprint = hashlib.sha256("\n".join(self._cell_id).encode()).hexdigest()[:16]
        self._reader = ShardReader(self.store)
        self.epoch, self.consumed, self.ahead = 0, 0, frozenset()

    @property
    def root(self) -> Any:
        """The release location: a Path for a local release, else its URL."""
        return self.store.root if self.store.is_local else self.store.url

    @property
    def num_samples(self) -> int:
        """N: selected samples per epoch before padding/dropping."""
        return len(self._cell_id)

    def order(self, epoch: int | None = None) -> np.ndarray:
        """(N,) selected-row indices in the global order of ``epoch`` (default: the current one)."""
        e = self.epoch if epoch is None else int(epoch)
        if not self.shuffle:
            return np.arange(self.num_samples)
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, e])))
        return rng.permutation(self.num_samples)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch; progress resets only when it differs from the current (e.g. resumed) epoch."""
        if int(epoch) != self.epoch:
            self.epoch, self.consumed, self.ahead = int(epoch), 0, frozenset()

    def remaining(self) -> np.ndarray:
        """Global positions not yet consumed in this epoch, in order, before padding/dropping."""
        pos = np.arange(min(self.consumed, self.num_samples), self.num_samples, dtype=np.int64)
        if self.ahead:
            pos = pos[~np.isin(pos, np.fromiter(self.ahead, dtype=np.int64))]
        return pos

    def plan(self, rank: int | None = None, world_size: int | None = None, worker: int = 0, num_workers: int = 1) -> np.ndarray:
        """Global positions that (rank, worker) yields next, in order (see the module docstring)."""
        r, w = _world(self._rank if rank is None else rank, self._world_size if world_size is None else world_size)
        pos = self.remaining()
        n = len(pos)
        if self.drop_last:
            pos = pos[: n - n % w]
        elif n % w:
            pos = np.concatenate([pos, self.num_samples + np.arange(w - n % w, dtype=np.int64)])
        mine = pos[r::w]
        if num_workers > 1:
            block = np.arange(len(mine)) // self.worker_block
            mine = mine[block % num_workers == worker]
        return mine

    def __len__(self) -> int:
        return len(self.plan())

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        # The plan is fixed now, so advance()/state changes during the epoch do not disturb this pass.
        positions = self.plan(worker=worker, num_workers=num_workers)
        return self._generate(positions, self.order(), self.epoch)

    def _generate(self, positions: np.ndarray, perm: np.ndarray, epoch: int) -> Iterator[dict[str, Any]]:
        n = self.num_samples
        for pos in positions.tolist():
            yield self.sample(int(perm[pos % n]), epoch, pos)

    def sample(self, i: int, epoch: int | None = None, position: int | None = None) -> dict[str, Any]:
        """Read selected row ``i`` (not a position) and apply the transform; ``position`` seeds augmentation."""
        channels = self._channels[i]
        # One pread by offset; the reader checks shape/dtype against the row and names shard + key on error.
        row = {"shard": self._shard[i], "key": self._key[i], "offset": int(self._offset[i]), "nbytes": int(self._nbytes[i]),
               "channels": channels, "height": int(self._height[i]), "width": int(self._width[i]), "dtype": self._dtype[i]}
        image = to_float_tensor(self._reader.read(row))
        e = self.epoch if epoch is None else epoch
        pos = -1 if position is None else position
        meta = row_meta({"meta": self._meta[i], "train_test_split": self._split[i], "zarr_row": self._zarr_row[i],
                         **dict(zip(TASK_COLUMNS, self._tasks[i].tolist(), strict=True))})
        meta.update({"stream_epoch": e, "stream_index": pos, "manifest_row": int(self._manifest_row[i])})
        sample = make_sample(image, channels=channels, source=self._source[i], label=self._label[i],
                             cell_id=self._cell_id[i], meta=meta)
        if self.transform is None:
            return sample
        # Direct reads (no position) seed from the row instead; the 4-word entropy cannot collide with positions.
        s = sample_seed(self.seed, e, pos) if pos >= 0 else sample_seed(self.seed, e, i, 1)
        if self._takes_generator:
            g = torch.Generator()
            g.manual_seed(s)
            return self.transform(sample, generator=g)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s)
            return self.transform(sample)

    def advance(self, n_global: int) -> None:
        """Mark the next ``n_global`` samples of the remaining global order (padding included) as consumed."""
        if n_global < 0:
            raise ValueError(f"advance({n_global}): n must be >= 0")
        rem = self.remaining()
        self.consumed = self.num_samples if n_global >= len(rem) else int(rem[n_global])
        self.ahead = frozenset(a for a in self.ahead if a > self.consumed)

    def state_dict(self, seen: Iterable[int] | None = None, consumed: int | None = None) -> dict[str, Any]:
        """Resumable state. ``seen``: global positions of this epoch the trainer consumed (from all ranks);
        ``consumed``: an explicit global prefix length instead. Without either: the stream's own counters
        (set by :meth:`advance` / :meth:`load_state_dict`). Does not modify the stream."""
        start = self.consumed if consumed is None else int(consumed)
        done = set(self.ahead)
        if seen is not None:
            done.update(int(p) for p in seen)
        n = self.num_samples
        while start < n and start in done:
            start += 1
        start = min(start, n)
        return {
            "version": STATE_VERSION,
            "epoch": self.epoch,
            "seed": self.seed,
            "consumed": start,
            "ahead": sorted(p for p in done if start < p < n),
            "num_samples": n,
            "fingerprint": self.fingerprint,
            "split": self.split,
            "shuffle": self.shuffle,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict` output (any world size / worker count). Checks the selection matches."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"stream state version {state.get('version')!r} not supported (expected {STATE_VERSION})")
        if state["num_samples"] != self.num_samples or state["fingerprint"] != self.fingerprint:
            raise ValueError(
                f"stream state is for a different selection ({state['num_samples']} samples, fingerprint "
                f"{state['fingerprint']}) than this stream ({self.num_samples}, {self.fingerprint}; split {self.split!r})"
            )
        if bool(state.get("shuffle", True)) != self.shuffle:
            raise ValueError(f"stream state has shuffle={state.get('shuffle')} but this stream has shuffle={self.shuffle}")
        self.seed, self.epoch = int(state["seed"]), int(state["epoch"])
        self.consumed = int(state["consumed"])
        self.ahead = frozenset(int(p) for p in state.get("ahead", ()))


class ProgressTracker:
    """Records which global positions the trainer received, per epoch (reads ``meta["stream_index"]``).

    ``update`` takes a sample, a batch dict, or a list of batches (``group_by_channels`` output).
    """

    def __init__(self) -> None:
        self.seen: dict[int, set[int]] = {}

    def update(self, item: dict[str, Any] | Sequence[dict[str, Any]]) -> None:
        items = item if isinstance(item, list | tuple) else [item]
        for it in items:
            metas = it["meta"] if isinstance(it["meta"], list | tuple) else [it["meta"]]
            for m in metas:
                if "stream_index" not in m:
                    raise KeyError(f"sample meta has no stream_index (not from a ShardStream?): keys {sorted(m)}")
                index, epoch = m["stream_index"], m["stream_epoch"]
                if isinstance(index, torch.Tensor | list | tuple):  # meta collated by torch's default_collate
                    for e, i in zip(torch.as_tensor(epoch).tolist(), torch.as_tensor(index).tolist(), strict=True):
                        self.seen.setdefault(int(e), set()).add(int(i))
                else:
                    self.seen.setdefault(int(epoch), set()).add(int(index))

    def clear(self, epoch: int | None = None) -> None:
        """Forget one epoch (e.g. after it completed), or everything."""
        if epoch is None:
            self.seen.clear()
        else:
            self.seen.pop(epoch, None)

    def positions(self, epoch: int) -> list[int]:
        """Positions of ``epoch`` received by this process, sorted."""
        return sorted(self.seen.get(epoch, ()))

    def gather(self, epoch: int) -> list[int]:
        """Positions of ``epoch`` received by any rank (a collective: call on every rank when DDP is initialised)."""
        mine = self.positions(epoch)
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()):
            return mine
        parts: list[list[int] | None] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, mine)
        return sorted({p for part in parts for p in (part or [])})


#: The public front door (``chammi_data.stream(...)``): same arguments as :class:`ShardStream`; ``root=None``
#: means the default release (``$CHAMMI_RELEASE`` / user cache).
stream = ShardStream
