"""Deterministic, resumable streaming of a release's tar shards for (distributed) training.

``stream(root, split, seed=...)`` is an ``IterableDataset`` of sample dicts. Which samples a (rank, worker)
reads and in which order is :mod:`chammi_data.loading.stream_order`: ``order="exact"`` (a global permutation,
one random read per cell; the default for local releases) or ``order="shards"`` (shards in a permutation, each
worker reading its own shard runs front to back with ``readahead`` ranges in flight, emitting through a seeded
shuffle buffer; the default for remote releases, where it needs one request per shard run instead of one per
cell). Both give every rank the same number of samples and resume exactly.

**Output.** ``output="float"`` (default): ``image`` is the float (C, H, W) tensor in [0, 1] after
``transform`` (scripts, ``load``-like use). ``output="uint8"``: ``image`` is the integer (C, H, W) array as
stored, the transform is NOT applied, and ``meta["aug_seed"]`` carries the seed the transform must use;
:func:`chammi_data.loading.collate.group_by_channels_uint8` stacks such samples per channel set in the
DataLoader worker and :class:`chammi_data.augment.device.DeviceTransform` applies the float math on the
training device, giving the same tensors as the float path.

**Guided crops** (CHAMMI-75, whose release holds whole images of any size): ``guided_crop=GuidedCrop(size)``
(or just ``size``) makes the reader cut a study-sized square around a seeded random cell of each image and
resize it to ``size`` x ``size`` uint8 (:mod:`chammi_data.augment.guided_crop`), so batches stack per channel
set; the crop depends on (seed, epoch, position) only, is in ``meta["crop_box"]`` and differs between
epochs. The cells come from the same bytes as the pixels (no extra read, in both orders). Without it such an
image is streamed whole with its cells in ``meta["centroids"]``. Rows of CHAMMI's sources are never cropped.

**Progress.** Each sample's ``meta`` holds ``stream_epoch``, ``stream_index`` (its position in the epoch's
global order G) and ``manifest_row``. A :class:`~chammi_data.loading.stream_tracker.StreamTracker` records
what the trainer received; ``stream.state_dict(seen=tracker.gather(epoch))`` stores the consumed positions (a
prefix plus ``ahead``), and a resumed stream skips them. ``advance(n)`` (``exact`` order only) marks the next
n positions of G consumed, exact when every rank received a prefix of its slice (``worker_block`` = the
DataLoader batch size).

**Workers.** ``set_epoch``, ``advance`` and ``load_state_dict`` are mirrored into shared memory, so
DataLoader workers with ``persistent_workers=True`` follow them at the start of every epoch's iterator.
Augmentation randomness comes from a generator seeded by (seed, epoch, position): it does not depend on
ranks or workers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

import chammi_data.loading.stream_order as so
from chammi_data.augment.guided_crop import GuidedCrop
from chammi_data.augment.transforms import accepts_generator, apply_seeded
from chammi_data.format.codec import Guidance
from chammi_data.format.manifest import read_manifest
from chammi_data.format.release_format import (
    make_sample,
    parse_channels,
    row_meta,
    select_rows,
    to_float_tensor,
)
from chammi_data.format.shards import ShardReader, add_guidance, check_image, decode_row, has_frame_checksum
from chammi_data.format.vocab import TASK_COLUMNS
from chammi_data.loading.columns import RowColumns
from chammi_data.loading.readahead import ByteRange, RangeReadahead
from chammi_data.store.storage import OnRelease, open_store

STATE_VERSION = 2
OUTPUTS = ("float", "uint8")
#: the plan fields mirrored in shared memory: epoch, consumed prefix, plan world size / workers / block (-1:
#: none)
_INFO = ("epoch", "consumed", "plan_world", "plan_workers", "plan_block")


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


class ShardStream(OnRelease, IterableDataset):
    """IterableDataset of sample dicts over a release's tar shards; see the module docstring.

    ``len()`` = samples this rank yields in the current state. ``workers``: the number of DataLoader workers
    that will read the stream (None, 0 and 1 mean one reader). It is recorded in the state, so that a
    ``shards``-order resume with the same ranks, workers and ``worker_block`` continues in exactly the same
    order; with any other topology a resume yields exactly the remaining samples, in another order.
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
        order: str = "auto",
        buffer: int = 1024,
        readahead: int = 2,
        output: str = "float",
        workers: int | None = None,
        guided_crop: GuidedCrop | int | None = None,
    ) -> None:
        self.store = open_store(root, storage_options, cache_dir)
        self.guided_crop = GuidedCrop(guided_crop) if isinstance(guided_crop, int) else guided_crop
        rows = select_rows(read_manifest(self.store), split, sources, where=f"release {self.store}")
        if order == "auto":
            order = "exact" if self.store.is_local else "shards"
        if order not in so.ORDERS:
            raise ValueError(f"unknown stream order {order!r}; valid: auto, {', '.join(so.ORDERS)}")
        if output not in OUTPUTS:
            raise ValueError(f"unknown stream output {output!r}; valid: {', '.join(OUTPUTS)}")
        if worker_block < 1:
            raise ValueError(f"worker_block must be >= 1, got {worker_block}")
        self.split, self.sources = split, None if sources is None else tuple(sources)
        self.seed, self.shuffle, self.drop_last = int(seed), bool(shuffle), bool(drop_last)
        self.order_mode, self.output = order, output
        self.worker_block, self.buffer, self.readahead = int(worker_block), int(buffer), int(readahead)
        self.workers = 1 if workers is None else max(1, int(workers))
        self.transform = transform
        self._takes_generator = transform is not None and accepts_generator(transform)
        self._rank, self._world_size = rank, world_size
        if rank is not None and world_size is not None:
            _world(rank, world_size)  # fail early on an impossible rank
        # Columns without a Python object per row (chammi_data.loading.columns): a 2.8 M-row CHAMMI-75
        # release opens in seconds; cheap to fork or pickle into workers, fast to index.
        self._rows = RowColumns(rows)
        self._manifest_row = self._rows.index
        self._shard = self._rows["shard"]
        self._shard_code = self._rows.codes("shard")[1].astype(np.int64)
        self._offset = rows["offset"].to_numpy(dtype=np.int64)
        self._nbytes = rows["nbytes"].to_numpy(dtype=np.int64)
        self._key = self._rows["key"]
        self._cell_id = self._rows["cell_id"]
        self._source = self._rows["source"]
        # the study of each row (its ``dataset`` group column) as a code: guided crops look its size up
        self._datasets, self._dataset_code = self._rows.codes("dataset")
        self._label = self._rows["label"]
        self._meta = self._rows["meta"]
        self._split = self._rows["train_test_split"]
        self._tasks = rows[list(TASK_COLUMNS)].to_numpy(dtype=bool)
        self._zarr_row = rows["zarr_row"].to_numpy(dtype=np.int64)
        names, codes = self._rows.codes("channels")
        self._channel_sets = [parse_channels(c) for c in names]
        self._channel_code = codes
        self._height = rows["height"].to_numpy(dtype=np.int64)
        self._width = rows["width"].to_numpy(dtype=np.int64)
        self._dtype = self._rows["dtype"]
        self._sha256 = self._rows["sha256"]
        self.fingerprint = self._rows.fingerprint("cell_id")
        self._reader = ShardReader(self.store)
        self.epoch, self.consumed = 0, 0
        self.ahead: frozenset[int] = frozenset()
        self.plan_topology: tuple[int, int, int] | None = None
        # shared with DataLoader workers (also persistent ones): the plan info and the consumed-ahead mask
        self._shared_info = torch.full((len(_INFO),), -1, dtype=torch.int64).share_memory_()
        self._shared_ahead = torch.zeros(max(1, self.num_samples), dtype=torch.bool).share_memory_()
        self._sync_shared()

    # -- state
    # ---------------------------------------------------------------------------------------------------
    @property
    def num_samples(self) -> int:
        """N: selected samples per epoch before padding/dropping."""
        return len(self._rows)

    def _sync_shared(self) -> None:
        topo = self.plan_topology or (-1, -1, -1)
        self._shared_info.copy_(torch.tensor([self.epoch, self.consumed, *topo], dtype=torch.int64))
        self._shared_ahead.zero_()
        if self.ahead:
            self._shared_ahead[torch.tensor(sorted(self.ahead), dtype=torch.int64)] = True

    def _load_shared(self) -> None:
        """In a DataLoader worker: take the epoch and progress the main process set (persistent workers)."""
        epoch, consumed, *topo = self._shared_info.tolist()
        self.epoch, self.consumed = int(epoch), int(consumed)
        self.plan_topology = None if topo[0] < 0 else (int(topo[0]), int(topo[1]), int(topo[2]))
        self.ahead = frozenset(torch.nonzero(self._shared_ahead).flatten().tolist())

    def order(self, epoch: int | None = None) -> np.ndarray:
        """(N,) selected-row indices in the global order G of ``epoch`` (default: the current one)."""
        e = self.epoch if epoch is None else int(epoch)
        return so.global_order(self.order_mode, self._shard_code, self.seed, e, self.shuffle)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch; progress resets only when it differs from the current (e.g. resumed) epoch."""
        if int(epoch) != self.epoch:
            self.epoch, self.consumed, self.ahead, self.plan_topology = int(epoch), 0, frozenset(), None
            self._sync_shared()

    def _done(self) -> np.ndarray:
        """(N,) bool: positions of G consumed in this epoch."""
        done = np.zeros(self.num_samples, dtype=bool)
        done[: min(self.consumed, self.num_samples)] = True
        if self.ahead:
            done[np.fromiter(self.ahead, dtype=np.int64)] = True
        return done

    def remaining(self) -> np.ndarray:
        """Global positions not yet consumed in this epoch, in order, before padding/dropping."""
        return np.flatnonzero(~self._done()).astype(np.int64)

    # -- plans
    # ---------------------------------------------------------------------------------------------------
    def _shard_parts(self, world: int, workers: int) -> tuple[list[list[np.ndarray]], bool]:
        """[rank][worker] G-position runs and whether they are the epoch-start plan (exact continuation)."""
        n, block = self.num_samples, self.worker_block
        done = self._done()
        if not done.any() or self.plan_topology == (world, workers, block):
            full = so.shard_parts(
                so.pad_to_world(np.arange(n, dtype=np.int64), n, world, self.drop_last), world, workers, block
            )
            left = [sum(int((~done[p[p < n]]).sum()) + int((p >= n).sum()) for p in parts) for parts in full]
            if len(set(left)) == 1:  # every rank still has the same number of samples: continue as planned
                return full, True
        rem = so.pad_to_world(self.remaining(), n, world, self.drop_last)
        return so.shard_parts(rem, world, workers, block), False

    def plan(
        self, rank: int | None = None, world_size: int | None = None, worker: int = 0, num_workers: int = 1
    ) -> np.ndarray:
        """Global positions (rank, worker) yields next, in emission order (see
        :mod:`chammi_data.loading.stream_order`)."""
        r, w = _world(
            self._rank if rank is None else rank, self._world_size if world_size is None else world_size
        )
        n = self.num_samples
        if self.order_mode == "exact":
            pos = so.pad_to_world(self.remaining(), n, w, self.drop_last)
            return so.exact_plan(pos, r, w, worker, num_workers, self.worker_block)
        parts, planned = self._shard_parts(w, num_workers)
        done = self._done()
        logical = worker
        # after b whole batches of this rank, the DataLoader's next batch is logical worker b % K's
        if planned:
            used = sum(int(done[p[p < n]].sum()) for p in parts[r])
            logical = so.logical_worker(worker, num_workers, used // self.worker_block)
        emitted = so.buffer_order(parts[r][logical], self.buffer, self.seed, self.epoch, r, logical)
        keep = np.array([p >= n or not done[p] for p in emitted.tolist()], dtype=bool)
        return emitted[keep] if len(emitted) else emitted

    def __len__(self) -> int:
        if self.order_mode == "exact":
            return len(self.plan())
        r, w = _world(self._rank, self._world_size)
        parts, _ = self._shard_parts(w, 1)
        done = self._done()
        return sum(
            int((p >= self.num_samples).sum() + (~done[p[p < self.num_samples]]).sum()) for p in parts[r]
        )

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        if info is not None:
            self._load_shared()
        worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        # The plan is fixed now, so advance()/state changes during the epoch do not disturb this pass.
        positions = self.plan(worker=worker, num_workers=num_workers)
        perm = self.order()
        if self.order_mode == "exact":
            return self._generate(positions, perm, self.epoch)
        return self._generate_shards(positions, perm, self.epoch)

    def _generate(self, positions: np.ndarray, perm: np.ndarray, epoch: int) -> Iterator[dict[str, Any]]:
        n = self.num_samples
        for pos in positions.tolist():
            yield self.sample(int(perm[pos % n]), epoch, pos)

    def _generate_shards(
        self, positions: np.ndarray, perm: np.ndarray, epoch: int
    ) -> Iterator[dict[str, Any]]:
        """Read the needed rows shard run by shard run (read order = G order), emit in ``positions`` order."""
        n = self.num_samples
        read_order = np.sort(positions, kind="stable")
        rows = perm[read_order % n]
        runs: list[ByteRange] = []
        run_of: dict[int, int] = {}
        left: list[int] = []
        for pos, i in zip(read_order.tolist(), rows.tolist(), strict=True):
            shard, start, end = self._shard[i], int(self._offset[i]), int(self._offset[i] + self._nbytes[i])
            last = runs[-1] if runs else None
            if last is not None and last.shard == shard and start >= last.end:
                runs[-1] = ByteRange(shard, last.start, end)
                left[-1] += 1
            else:
                runs.append(ByteRange(shard, start, end))
                left.append(1)
            run_of[pos] = len(runs) - 1
        fetched: dict[int, memoryview] = {}
        source = iter(enumerate(RangeReadahead(self.store, runs, self.readahead)))
        for pos in positions.tolist():
            k = run_of[pos]
            while k not in fetched:
                j, (_, data) = next(source)
                fetched[j] = memoryview(data)
            i = int(perm[pos % n])
            start = int(self._offset[i]) - runs[k].start
            # a view, no copy
            yield self.sample(i, epoch, pos, data=fetched[k][start : start + int(self._nbytes[i])])
            left[k] -= 1
            if left[k] == 0:
                del fetched[k]

    # -- samples
    # -------------------------------------------------------------------------------------------------
    def _row(self, i: int) -> dict[str, Any]:
        return {
            "shard": self._shard[i],
            "key": self._key[i],
            "offset": int(self._offset[i]),
            "nbytes": int(self._nbytes[i]),
            "channels": self._channel_sets[self._channel_code[i]],
            "height": int(self._height[i]),
            "width": int(self._width[i]),
            "dtype": self._dtype[i],
            "sha256": self._sha256[i],
            "source": self._source[i],
        }

    def sample(
        self,
        i: int,
        epoch: int | None = None,
        position: int | None = None,
        data: bytes | memoryview | None = None,
    ) -> dict[str, Any]:
        """Read selected row ``i`` (not a position) and build its sample; ``position`` seeds augmentation.
        ``data``: the row's compressed image bytes when already fetched (shard runs)."""
        row = self._row(i)
        if data is None:
            image, guidance = self._reader.read_member(row)
        else:
            where = self._reader.where(row)
            image, guidance = decode_row(data, where, row)
            check_image(image, row, where, verify=not has_frame_checksum(data))
        e = self.epoch if epoch is None else epoch
        pos = -1 if position is None else position
        meta = row_meta(
            {
                "meta": self._meta[i],
                "train_test_split": self._split[i],
                "zarr_row": self._zarr_row[i],
                **dict(zip(TASK_COLUMNS, self._tasks[i].tolist(), strict=True)),
            }
        )
        meta.update({"stream_epoch": e, "stream_index": pos, "manifest_row": int(self._manifest_row[i])})
        # Direct reads (no position) seed from the row instead; the 4-word entropy cannot collide with
        # positions.
        s = sample_seed(self.seed, e, pos) if pos >= 0 else sample_seed(self.seed, e, i, 1)
        if guidance is not None:  # the crop's randomness: its own seed from (seed, epoch, position)
            crop_seed = sample_seed(self.seed, e, pos, 2) if pos >= 0 else sample_seed(self.seed, e, i, 3)
            image = self._guide(image, guidance, meta, crop_seed, i)
        if self.output == "uint8":
            meta["aug_seed"] = s
            return make_sample(
                image,
                channels=self._channel_sets[self._channel_code[i]],
                source=self._source[i],
                label=self._label[i],
                cell_id=self._cell_id[i],
                meta=meta,
            )
        sample = make_sample(
            to_float_tensor(image),
            channels=self._channel_sets[self._channel_code[i]],
            source=self._source[i],
            label=self._label[i],
            cell_id=self._cell_id[i],
            meta=meta,
        )
        return apply_seeded(self.transform, sample, s, self._takes_generator)

    def _guide(self, image: np.ndarray, guidance: Guidance, meta: dict[str, Any], seed: int, i: int) -> Any:
        """A whole CHAMMI-75 image: its guided crop (``meta["crop_box"]``: top, left, side, cell), or, without
        ``guided_crop``, the whole image with its cells in ``meta["centroids"]``."""
        if self.guided_crop is None:
            add_guidance(meta, guidance)
            return image
        study = str(self._datasets[self._dataset_code[i]])
        crop, box = self.guided_crop(image, guidance.centroids, study, seed)
        meta["crop_box"] = list(box)
        return crop

    def advance(self, n_global: int) -> None:
        """Mark the next ``n_global`` samples of the remaining global order (padding included) as consumed
        (``exact`` order only: in ``shards`` order progress is recorded with a :class:`StreamTracker`)."""
        if self.order_mode != "exact":
            raise ValueError(
                "advance() needs order='exact'; record progress with a StreamTracker and "
                "state_dict(seen=...) in 'shards' order"
            )
        if n_global < 0:
            raise ValueError(f"advance({n_global}): n must be >= 0")
        rem = self.remaining()
        self.consumed = self.num_samples if n_global >= len(rem) else int(rem[n_global])
        self.ahead = frozenset(a for a in self.ahead if a > self.consumed)
        self._sync_shared()

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
        r, w = _world(self._rank, self._world_size)
        topo = self.plan_topology or (w, self.workers, self.worker_block)
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
            "order": self.order_mode,
            "plan": list(topo) if topo else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict` output (any world size / worker count). Checks the selection
        matches."""
        if state.get("version") not in (1, STATE_VERSION):
            raise ValueError(
                f"stream state version {state.get('version')!r} not supported (expected {STATE_VERSION})"
            )
        if state["num_samples"] != self.num_samples or state["fingerprint"] != self.fingerprint:
            raise ValueError(
                f"stream state is for a different selection ({state['num_samples']} samples, fingerprint "
                f"{state['fingerprint']}) than this stream ({self.num_samples}, {self.fingerprint}; split "
                f"{self.split!r})"
            )
        if bool(state.get("shuffle", True)) != self.shuffle:
            raise ValueError(
                f"stream state has shuffle={state.get('shuffle')} but this stream has shuffle={self.shuffle}"
            )
        if state.get("order", "exact") != self.order_mode:
            raise ValueError(
                f"stream state is for order={state.get('order', 'exact')!r} but this stream has "
                f"order={self.order_mode!r}"
            )
        self.seed, self.epoch = int(state["seed"]), int(state["epoch"])
        self.consumed = int(state["consumed"])
        self.ahead = frozenset(int(p) for p in state.get("ahead", ()))
        plan = state.get("plan")
        self.plan_topology = tuple(int(x) for x in plan) if plan else None  # type: ignore[assignment]
        self._sync_shared()


#: The public front door (``chammi_data.stream(...)``): same arguments as :class:`ShardStream`; ``root=None``
#: means the default release (``$CHAMMI_RELEASE`` / user cache).
stream = ShardStream
