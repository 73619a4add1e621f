"""Shard writing on the cluster: the shard plan of a source's ordered cells, and the tar / zarr write tasks
that run on the workers.

Per shard, two tasks (tar and zarr: different files, one writer each) only concatenate the bytes the workers
encoded in the unit phase. Which worker writes what, and when, does not change a byte of the output.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from chammi_data.format.groups import GroupPlan, source_groups
from chammi_data.format.release_format import canonical_json, cell_record
from chammi_data.format.vocab import RELEASE_SOURCE_KEYS, SOURCES, is_variable
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
    """({source: [{index, zarr_start, group, entries: [(spill, split, tasks, record)]}]}, {source:
    its image groups}), sources in release order.

    ``record`` is the cell's spill record (ids, label, channels, dtype, shape, sha256, meta, groups and where
    its encoded bytes lie in the spill), so a shard writer reads only those bytes. A CHAMMI source is one
    group (``group`` None); a variable source's shards never cross its groups (``group`` = [g, j]: zarr
    shard j of group g; :mod:`chammi_data.format.groups`)."""
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
                    )
                    for c in mine[start:end]
                ]
                group = [g.index, j] if is_variable(src) else None
                plans[src].append({"index": index, "zarr_start": start, "group": group, "entries": entries})
    return plans, groups


def read_shard_entries(entries_json: str, what: str) -> list[Any]:
    """What one shard writer needs, read from the spills (entries: spill path, split, tasks, record).

    The entries travel as one JSON string: dask walks every nested list and dict of a task's arguments
    looking for keys, a string it leaves alone.

    ``what="tar"``: an ``EncodedCell`` per cell (its shard record with the assigned split and tasks, and its
    tar member); ``what="zarr"``: the zarr chunk bytes.
    """
    from chammi_data.format.writer import EncodedCell

    parts: list[Any] = []
    with SpillReader() as spills:
        for path, split, tasks, rec in json.loads(entries_json):
            data = spills.read(path, rec[what], f"cell {rec['cell_id']}")
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


def write_tar_task(
    root: str, source: str, shard_index: int, zarr_start: int, entries: str, group: list[int] | None = None
) -> tuple[Any, float]:
    """Worker task: tar shard ``shard_index`` from the spills' encoded members; (ShardRecord, seconds)."""
    from chammi_data.format.writer import write_tar_shard

    t0 = time.perf_counter()
    encoded = read_shard_entries(entries, "tar")
    return write_tar_shard(root, source, shard_index, encoded, zarr_start), time.perf_counter() - t0


def write_zarr_task(
    root: str, source: str, shard_index: int, zarr_start: int, entries: str, group: list[int] | None = None
) -> tuple[Any, float]:
    """Worker task: zarr shard ``shard_index`` (its only writer) from the spills' encoded chunks; for a
    variable source zarr shard ``j`` of its group ``g`` (``group = [g, j]``); (ZarrShardRecord: its rows'
    pixel crc32c for the manifest, seconds)."""
    from chammi_data.format.writer import write_zarr_shard

    t0 = time.perf_counter()
    where = None if group is None else (int(group[0]), int(group[1]))
    rec = write_zarr_shard(root, source, shard_index, zarr_start, read_shard_entries(entries, "zarr"), where)
    return rec, time.perf_counter() - t0


class ShardWriting:
    """The write tasks of a build into ``root`` (an empty staging folder), source by source: each source gets
    its zarr array, then a tar and a zarr task per shard."""

    def __init__(self, client: Any, root: Path, cells_per_shard: int, progress: bool):
        self.client, self.root, self.cells_per_shard, self.progress = client, root, cells_per_shard, progress
        self.futures: list[Any] = []
        self.busy_s = 0.0

    def submit(self, cells: list[dict[str, Any]]) -> None:
        """Queue the shards of ``cells`` (one or more sources' cells, in release order)."""
        from chammi_data.format.writer import create_collection, create_zarr_array

        if not cells:
            return
        plans, groups = plan_shards(cells, self.cells_per_shard)
        for src, src_plans in plans.items():
            if is_variable(src):  # a collection with one image array per group
                create_collection(self.root, src, [g.attrs() for g in groups[src]])
                for g in groups[src]:
                    _dataset, channels, h, w, dtype = g.key
                    create_zarr_array(
                        self.root, src, g.rows, channels, (h, w), dtype, self.cells_per_shard, g.index
                    )
            else:
                info = SOURCES[src]
                first = next(c for c in cells if c["source"] == src)
                n = sum(len(p["entries"]) for p in src_plans)
                dtype = first.get("dtype", "uint8")
                create_zarr_array(self.root, src, n, info.channels, info.tile_hw, dtype, self.cells_per_shard)
            for p in src_plans:
                entries = canonical_json(p["entries"])
                self.futures += [
                    self.client.submit(
                        task,
                        str(self.root),
                        src,
                        p["index"],
                        p["zarr_start"],
                        entries,
                        p["group"],
                        pure=False,
                        priority=WRITE_PRIORITY,
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
