"""Shard writing on the cluster: the shard plan of a source's ordered cells, and the tar / zarr write tasks
that run on the workers.

Per shard, two tasks (tar and zarr: different files, one writer each) only concatenate the bytes the workers
encoded in the unit phase. Which worker writes what, and when, does not change a byte of the output.

Where the release is assembled is a :class:`ReleaseSink`: a store the workers write the shard files into
(the output folder's staging folder, or the new generation's prefix of an object-store output) and a
folder on the client where the small files are made (zarr metadata, manifests, ``release.json``: the
staging folder itself, or a temp folder whose files are uploaded). On an object store a worker writes each
shard file with the same writer functions into a temp folder of its own disk and uploads it at once: no
disk is shared between the client and the workers.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chammi_data.format.groups import GroupPlan, source_groups
from chammi_data.format.release_format import canonical_json, cell_record
from chammi_data.format.vocab import RELEASE_SOURCE_KEYS, SOURCES, is_variable
from chammi_data.format.writer import shard_relpath
from chammi_data.store.objects import ObjectStore
from pipelines.engine.spill import SpillReader

#: dask priority of shard-writing tasks: they run before the unit tasks of the sources still in progress
WRITE_PRIORITY = 10
#: the fields of a cell's spill record (``writer.EncodedCell.record``, where its bytes lie) that a shard
#: writer needs
SPILL_RECORD = (
    "cell_id",
    "source",
    "label",
    "channels",
    "dtype",
    "shape",
    "meta",
    "groups",
    "sha256",
    "tar",
    "zarr",
)


def plan_shards(
    cells: list[dict[str, Any]], per: int
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, list[GroupPlan]]]:
    """({source: [{index, zarr_start, group, entries: [(spill, split, tasks, record, spill key)], worker}]},
    {source: its image groups}), sources in release order.

    ``record`` is the cell's spill record (ids, label, channels, dtype, shape, sha256, meta, groups and where
    its encoded bytes lie in the spill), so a shard writer reads only those bytes; ``worker`` is the dask
    worker that made most of the shard's cells (it holds their spills on its disk), "" when unknown. A CHAMMI
    source is one group (``group`` None); a variable source's shards never cross its groups (``group`` =
    [g, j]: zarr shard j of group g; :mod:`chammi_data.format.groups`)."""
    plans: dict[str, list[dict[str, Any]]] = {}
    groups: dict[str, list[GroupPlan]] = {}
    for src in RELEASE_SOURCE_KEYS:
        mine = [c for c in cells if c["source"] == src]
        if not mine:
            continue
        groups[src] = source_groups(src, mine, per)
        plans[src] = []
        for g in groups[src]:
            for index, start, end, j in g.shards(per):
                entries = [
                    (
                        c["spill"],
                        c.get("split", ""),
                        c.get("tasks", []),
                        {f: c[f] for f in SPILL_RECORD if f in c},
                        c.get("spill_key", ""),
                    )
                    for c in mine[start:end]
                ]
                workers = Counter(c.get("worker", "") for c in mine[start:end])
                worker = max(sorted(workers), key=lambda w: workers[w]) if workers else ""
                group = [g.index, j] if is_variable(src) else None
                plans[src].append(
                    {
                        "index": index,
                        "zarr_start": start,
                        "group": group,
                        "entries": entries,
                        "worker": worker,
                    }
                )
    return plans, groups


class ReleaseSink:
    """Where a release is assembled: ``store`` (the workers write shard files there) and ``mirror`` (a client
    folder for zarr metadata, manifests and release.json; the same place as ``store`` for a local output)."""

    def __init__(self, store: ObjectStore, mirror: Path):
        self.store, self.mirror = store, Path(mirror)
        self.remote = not (store.is_local and Path(store.url) == self.mirror)

    def zarr_metadata(self, source: str) -> dict[str, str]:
        """{path: text} of the zarr metadata files of ``source`` (what a worker needs to write its shards
        with the zarr writer); {} for a local output, whose workers see the folder."""
        if not self.remote:
            return {}
        folder = self.mirror / "zarr" / f"{source}.zarr"
        return {
            p.relative_to(self.mirror).as_posix(): p.read_text(encoding="utf-8")
            for p in sorted(folder.rglob("zarr.json"))
        }

    def upload(self, rels: Iterable[str]) -> None:
        """Copy these files of the mirror into the store (nothing to do for a local output)."""
        if self.remote:
            for rel in rels:
                self.store.put_file(rel, self.mirror / rel)


@contextlib.contextmanager
def shard_root(store: ObjectStore, metadata: dict[str, str]) -> Iterator[Path]:
    """The folder a shard writer writes into: the staging folder of a local output, else a temp folder of
    this worker holding the zarr metadata (its files are uploaded by the caller and then removed)."""
    if not metadata and store.is_local:
        yield Path(store.url)
        return
    tmp = Path(tempfile.mkdtemp(prefix="chammi-shard-"))
    try:
        for rel, text in metadata.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_text(text, encoding="utf-8")
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _named(path: Path) -> Iterator[None]:
    """A full disk while writing ``path`` names it (a write's ENOSPC carries no file name)."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT) and exc.filename is None:
            raise OSError(exc.errno, os.strerror(exc.errno), str(path)) from None
        raise


def read_shard_entries(entries_json: str, what: str, spills: ObjectStore) -> list[Any]:
    """What one shard writer needs, read from the spills (entries: spill path, split, tasks, record).

    The entries travel as one JSON string: dask walks every nested list and dict of a task's arguments
    looking for keys, a string it leaves alone.

    ``what="tar"``: an ``EncodedCell`` per cell (its shard record with the assigned split and tasks, and its
    tar member); ``what="zarr"``: the zarr chunk bytes.
    """
    from chammi_data.format.writer import EncodedCell

    parts: list[Any] = []
    entries = json.loads(entries_json)
    with SpillReader(spills) as reader:
        reader.fetch([(path, rec[what], key) for path, _, _, rec, key in entries])
        for path, split, tasks, rec, key in entries:
            data = reader.read(path, rec[what], f"cell {rec['cell_id']}", key)
            if what == "zarr":
                parts.append(data)
                continue
            record = cell_record(
                cell_id=rec["cell_id"],
                source=rec["source"],
                label=rec["label"],
                channels=rec["channels"],
                shape=rec["shape"],
                dtype=rec["dtype"],
                split=split,
                tasks=tasks,
                groups=rec["groups"],
                sha256=rec["sha256"],
                meta=rec["meta"],
            )
            parts.append(EncodedCell(record, data, b""))
    return parts


@dataclass(frozen=True)
class ShardJob:
    """One planned shard, what both of its write tasks (tar and zarr) get: shard ``index`` of ``source``, its
    first zarr row ``zarr_start``, its ``entries`` (the plan's, as one canonical JSON string: see
    :func:`read_shard_entries`) and, for a variable source, ``group = [g, j]`` (zarr shard ``j`` of image
    group ``g``)."""

    source: str
    index: int
    zarr_start: int
    entries: str
    group: list[int] | None = None


def write_tar_task(
    store: ObjectStore, metadata: dict[str, str], shard: ShardJob, spills: ObjectStore
) -> tuple[Any, float]:
    """Worker task: the tar shard of ``shard`` from the spills' encoded members; (ShardRecord, seconds)."""
    from chammi_data.format.writer import write_tar_shard

    t0 = time.perf_counter()
    encoded = read_shard_entries(shard.entries, "tar", spills)
    with shard_root(store, metadata) as root, _named(root / shard_relpath(shard.source, shard.index)):
        record = write_tar_shard(root, shard.source, shard.index, encoded, shard.zarr_start)
        if metadata or not store.is_local:
            store.put_file(record.path, root / record.path)
    return record, time.perf_counter() - t0


def write_zarr_task(
    store: ObjectStore, metadata: dict[str, str], shard: ShardJob, spills: ObjectStore
) -> tuple[Any, float]:
    """Worker task: the zarr shard of ``shard`` (its only writer) from the spills' encoded chunks; for a
    variable source zarr shard ``j`` of its group ``g`` (``shard.group = [g, j]``); (ZarrShardRecord: its
    rows' pixel crc32c for the manifest, seconds)."""
    from chammi_data.format.writer import write_zarr_shard

    t0 = time.perf_counter()
    chunks = read_shard_entries(shard.entries, "zarr", spills)
    source, group = shard.source, shard.group
    where = None if group is None else (int(group[0]), int(group[1]))
    with shard_root(store, metadata) as root, _named(root / "zarr" / f"{source}.zarr"):
        rec = write_zarr_shard(root, source, shard.index, shard.zarr_start, chunks, where)
        if metadata or not store.is_local:
            folder = root / "zarr" / f"{source}.zarr"
            for path in sorted(folder.rglob("*")):
                rel = path.relative_to(root).as_posix()
                if path.is_file() and rel not in metadata:  # the shard file (none when every cell is 0)
                    store.put_file(rel, path)
    return rec, time.perf_counter() - t0


class ShardWriting:
    """The write tasks of a build into ``sink`` (an empty staging folder or generation prefix), source by
    source: each source gets its zarr array, then a tar and a zarr task per shard. ``spills``: the store the
    unit spills are in."""

    def __init__(
        self, client: Any, sink: ReleaseSink, cells_per_shard: int, progress: bool, spills: ObjectStore
    ):
        self.client, self.sink, self.cells_per_shard, self.progress = client, sink, cells_per_shard, progress
        self.spills = spills
        self.futures: list[Any] = []
        self.busy_s = 0.0

    def submit(self, cells: list[dict[str, Any]]) -> None:
        """Queue the shards of ``cells`` (one or more sources' cells, in release order)."""
        from chammi_data.format.writer import create_collection, create_zarr_array

        if not cells:
            return
        plans, groups = plan_shards(cells, self.cells_per_shard)
        root = self.sink.mirror
        for src, src_plans in plans.items():
            if is_variable(src):  # a collection with one image array per group
                create_collection(root, src, [g.attrs() for g in groups[src]])
                for g in groups[src]:
                    _dataset, channels, h, w, dtype = g.key
                    create_zarr_array(
                        root, src, g.rows, channels, (h, w), dtype, self.cells_per_shard, g.index
                    )
            else:
                info = SOURCES[src]
                first = next(c for c in cells if c["source"] == src)
                n = sum(len(p["entries"]) for p in src_plans)
                dtype = first.get("dtype", "uint8")
                create_zarr_array(root, src, n, info.channels, info.tile_hw, dtype, self.cells_per_shard)
            metadata = self.sink.zarr_metadata(src)
            self.sink.upload(metadata)
            for p in src_plans:
                shard = ShardJob(src, p["index"], p["zarr_start"], canonical_json(p["entries"]), p["group"])
                # where most of the shard's spills are on disk (object-store outputs), if still there
                place = (
                    {"workers": [p["worker"]], "allow_other_workers": True}
                    if p["worker"] and self.sink.remote
                    else {}
                )
                self.futures += [
                    self.client.submit(
                        task,
                        self.sink.store,
                        metadata,
                        shard,
                        self.spills,
                        pure=False,
                        priority=WRITE_PRIORITY,
                        **place,
                    )
                    for task in (write_zarr_task, write_tar_task)
                ]

    def collect(self) -> list[Any]:
        """Wait for every write task; the shard records sorted by path."""
        from dask.distributed import as_completed

        from chammi_data.progress import progress as progress_bar

        records = []
        bar = progress_bar(
            total=len(self.futures), desc="writing shards", unit="file", disable=not self.progress
        )
        for fut in as_completed(self.futures):
            rec, seconds = fut.result()
            self.busy_s += seconds
            if rec is not None:
                records.append(rec)
            bar.update(1)
        bar.close()
        return sorted(records, key=lambda r: r.path)

    def drain(self) -> None:
        """Wait for every write task, ignoring results and errors (a failed build: nothing will be published,
        but no task may still write into the folder when it is removed)."""
        from dask.distributed import wait

        if self.futures:
            wait(self.futures)
