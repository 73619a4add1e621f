"""The curation engine: source pipelines on dask.distributed -> one reproducible, resumable release.

Per build: discover every pipeline's units (sorted) -> run ``process`` on each unit not done yet as a
dask task (the units of all sources are queued at once); the worker compresses the unit's cells and spills
them with records and skips to ``OUTPUT/.work/<name>/units/<unit_id>.spill`` (temp file + ``os.replace``,
so a spill is either complete or absent) -> as soon as a source's units are done: ``assign`` on the
metadata table of its cells -> order them (by ``cell_id``, or the pipeline's unit order when it sets
``order = "unit"``) -> per shard, one dask task writes the tar and one the zarr shard (one writer per file,
concatenating the encoded bytes), while other sources' units still run (``--strict``: only once no source
has a skip) -> ``finalize_release`` -> build_report.json.

Why the output bytes do not depend on workers, scheduling or interruption: cell ids come from raw
identifiers, cells are sorted before shards are planned, each shard is written by exactly one task from
spills whose content depends only on (unit, config), and nothing run-dependent (paths, times, worker
counts) goes into release.json. A rerun after SIGKILL reuses every complete spill whose key matches.

Pipeline attributes the engine reads: ``order`` (``"cell_id"`` default, or ``"unit"``: unit order then the
order inside a unit) and ``units_per_task`` (default 1; small units are sent to workers in batches, each
unit still spilled on its own).

``scheduler=None`` starts a ``LocalCluster(n_workers=workers, threads_per_worker=1, processes=True)``;
an address connects ``Client(address)`` (its workers must see the output folder). Same code path.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
import time
import traceback
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from chammi_data.paths import default_release_dir
from chammi_data.release_format import canonical_json, cell_record
from chammi_data.schema import Cell
from chammi_data.vocab import SOURCES
from pipelines.base import Skipped, Unit, UnitResult, UnitSkip
from pipelines.registry import RAW_SOURCES, get_pipeline
from pipelines.report import BuildResult, assemble, cell_table, dedupe, order_cells, plan_shards

#: Build configuration defaults; a ``--config`` YAML is merged over them (nested mappings merge).
DEFAULT_CONFIG: dict[str, Any] = {
    "cells_per_shard": 64,  # 64 cells = one tar shard = one zarr shard (HPA: ~64 MiB in memory per writer)
    "wtc11": {},  # see pipelines.wtc11.DEFAULTS
    "hpa": {},  # see pipelines.hpa.DEFAULTS
    "cp": {},  # see pipelines.cp.DEFAULTS
    "tasks": {},  # {source: path or rules mapping} overriding manifests/tasks/<source>.yaml
}
SPILL_VERSION = 3  # part of every spill key: a spill written by another format version is recomputed
log = logging.getLogger(__name__)


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` merged into a copy of ``base``; nested mappings merge, everything else replaces."""
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(out.get(k), Mapping) and isinstance(v, Mapping) else copy.deepcopy(v)
    return out


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Defaults <- YAML file ``path`` <- ``overrides``; a clear error for a missing or non-mapping file."""
    config = copy.deepcopy(DEFAULT_CONFIG)
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"build config {p} not found")
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        if not isinstance(data, Mapping):
            raise ValueError(f"build config {p}: expected a YAML mapping at the top level, got {type(data).__name__}")
        config = deep_merge(config, data)
    if overrides:
        config = deep_merge(config, overrides)
    if not isinstance(config.get("cells_per_shard"), int) or config["cells_per_shard"] < 1:
        raise ValueError(f"build config: cells_per_shard must be a positive integer, got {config.get('cells_per_shard')!r}")
    return config


def config_hash(config: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(dict(config)).encode()).hexdigest()


# --- spills (run on the workers) ----------------------------------------------------------------------------

#: config keys that never change what ``process`` makes (used after the unit phase only)
_NOT_FOR_UNITS = ("cells_per_shard", "tasks")


def unit_config_hash(config: Mapping[str, Any], name: str) -> str:
    """Hash of the config as far as ``process`` of pipeline ``name`` can see it.

    Other raw sources' sections, the shard size and the task rules are left out, so changing them does not
    throw away finished units of this source.
    """
    own = {k: v for k, v in config.items() if k not in _NOT_FOR_UNITS and (k not in RAW_SOURCES or k == name)}
    return config_hash(own)


def spill_key(name: str, unit: Unit, cfg_hash: str) -> str:
    """What a spill depends on: pipeline name, unit payload and build config. A mismatch = recompute."""
    return hashlib.sha256(canonical_json([SPILL_VERSION, name, unit.unit_id, unit.payload, cfg_hash]).encode()).hexdigest()


def _check_cells(result: UnitResult, unit: Unit, allowed: set[str]) -> UnitResult:
    """Keep cells that fit their source's tile and channels; the rest become skips (wrong shape...)."""
    good: list[Cell] = []
    skipped = list(result.skipped)
    for cell in result.cells:
        info = SOURCES.get(cell.source)
        problem = ""
        if cell.source not in allowed or info is None:
            problem = f"cell source {cell.source!r} not made by this pipeline ({sorted(allowed)})"
        elif cell.channels != info.channels:
            problem = f"channels {list(cell.channels)} != {cell.source} channels {list(info.channels)}"
        elif cell.image.shape[1:] != info.tile_hw:
            problem = f"wrong shape {tuple(cell.image.shape)}; {cell.source} tiles are {info.tile_hw}"
        if problem:
            skipped.append(Skipped(unit.source, unit.unit_id, f"{problem} (cell {cell.cell_id})",
                                   str(cell.meta.get("file", "")), cell.meta.get("row")))
        else:
            good.append(cell)
    return UnitResult(good, skipped)


#: a spill file ends with its JSON trailer, the trailer's length (uint64 little-endian) and this marker
_SPILL_MAGIC = b"CHAMMI-SPILL-2\n"
_SPILL_TAIL = 8 + len(_SPILL_MAGIC)


def write_spill(path: Path, key: str, result: UnitResult) -> list[dict[str, Any]]:
    """Atomically write a unit's cells to one spill file and return their records.

    Layout: the encoded bytes of every cell (its tar image member, then its zarr chunk: ``writer.encode_cell``;
    compressing here, on the worker that made the cell, spreads the heaviest part of writing over the unit
    phase), then a JSON trailer ``{"key", "records", "skipped"}``, its length and a marker. Each record holds
    the cell's ids, metadata, pixel sha256 and shape, and ``tar`` / ``zarr`` = [offset, length] of its bytes,
    so a shard writer reads exactly its bytes with one ``pread`` each. Temp file + ``os.replace``: a spill
    is complete or absent; a torn or foreign file fails the marker check and the unit is recomputed.
    """
    from chammi_data.writer import encode_cell

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex}.tmp")
    records = []
    try:
        with open(tmp, "wb") as fh:
            pos = 0
            for c in result.cells:
                enc = encode_cell(c)
                fh.write(enc.member)
                fh.write(enc.chunk)
                records.append({**enc.record, "tar": [pos, len(enc.member)],
                                "zarr": [pos + len(enc.member), len(enc.chunk)]})
                pos += len(enc.member) + len(enc.chunk)
            trailer = canonical_json({"key": key, "records": records,
                                      "skipped": [s.to_dict() for s in result.skipped]}).encode("utf-8")
            fh.write(trailer)
            fh.write(len(trailer).to_bytes(8, "little") + _SPILL_MAGIC)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return records


def read_spill_meta(path: Path, key: str) -> tuple[list[dict[str, Any]], list[Skipped]] | None:
    """(records, skips) of a complete spill with the expected key; None when absent, stale or damaged."""
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            if size < _SPILL_TAIL:
                return None
            fh.seek(size - _SPILL_TAIL)
            tail = fh.read(_SPILL_TAIL)
            n = int.from_bytes(tail[:8], "little")
            if tail[8:] != _SPILL_MAGIC or n > size - _SPILL_TAIL:
                return None
            fh.seek(size - _SPILL_TAIL - n)
            data = json.loads(fh.read(n).decode("utf-8"))
        if data.get("key") != key:
            return None
        records = data["records"]
        skips = [Skipped(d["source"], d["unit"], d["reason"], d["file"], d["row"], d["count"]) for d in data["skipped"]]
    except Exception:  # a foreign file: recompute the unit
        return None
    return records, skips


def run_unit(name: str, unit: Unit, config: dict[str, Any], spill_path: str, key: str) -> dict[str, Any]:
    """Worker task: process one unit, spill it, return its records and skips (never the pixels)."""
    t0 = time.perf_counter()
    pipeline = get_pipeline(name)
    allowed = set(SOURCES) if name == "chammi" else {pipeline.key}
    try:
        result = pipeline.process(unit, config)
    except UnitSkip as exc:
        result = UnitResult([], [Skipped(unit.source, unit.unit_id, exc.reason, exc.file, exc.row)])
    except Exception as exc:  # a bug or an input we did not foresee: never crash the build, report it
        tb = traceback.format_exc(limit=3).strip().splitlines()[-1]
        result = UnitResult([], [Skipped(unit.source, unit.unit_id, f"error: {type(exc).__name__}: {exc} [{tb}]")])
    result = _check_cells(result, unit, allowed)
    records = write_spill(Path(spill_path), key, result)
    return {"unit_id": unit.unit_id, "records": records,
            "skipped": [s.to_dict() for s in result.skipped], "seconds": time.perf_counter() - t0}


def run_units(name: str, batch: list[tuple[Unit, str, str]], config: dict[str, Any]) -> list[dict[str, Any]]:
    """Worker task: :func:`run_unit` over a batch of (unit, spill path, spill key)."""
    return [run_unit(name, unit, config, path, key) for unit, path, key in batch]


def _load_shard(entries_json: str, what: str) -> list[Any]:
    """What one shard writer needs (entries: spill path, index, split, tasks, record; see ``plan_shards``).

    The entries travel as one JSON string: dask walks every nested list and dict of a task's arguments
    looking for keys, a string it leaves alone.

    ``what="tar"``: an ``EncodedCell`` per cell (its shard record with the assigned split and tasks, and its
    tar member); ``what="zarr"``: the zarr chunk bytes. Each cell's bytes are one ``pread`` at the offset its
    spill record gives.
    """
    from chammi_data.writer import EncodedCell

    parts: list[Any] = []
    fds: dict[str, int] = {}
    try:
        for path, _idx, split, tasks, rec in json.loads(entries_json):
            if path not in fds:
                fds[path] = os.open(path, os.O_RDONLY)
            offset, length = rec[what]
            data = os.pread(fds[path], length, offset)
            if len(data) != length:
                raise OSError(f"spill {path} is shorter than its records say (cell {rec['cell_id']})")
            if what == "zarr":
                parts.append(data)
                continue
            record = cell_record(cell_id=rec["cell_id"], source=rec["source"], label=rec["label"],
                                 channels=rec["channels"], shape=rec["shape"], dtype=rec["dtype"], split=split,
                                 tasks=tasks, groups=rec["groups"], sha256=rec["sha256"], meta=rec["meta"])
            parts.append(EncodedCell(record, data, b""))
    finally:
        for fd in fds.values():
            os.close(fd)
    return parts


def write_tar_task(root: str, source: str, shard_index: int, zarr_start: int, entries: str) -> tuple[Any, float]:
    """Worker task: tar shard ``shard_index`` from the spills' encoded members; (ShardRecord, seconds)."""
    from chammi_data.writer import write_tar_shard

    t0 = time.perf_counter()
    encoded = _load_shard(entries, "tar")
    return write_tar_shard(root, source, shard_index, encoded, zarr_start), time.perf_counter() - t0


def write_zarr_task(root: str, source: str, shard_index: int, zarr_start: int, entries: str) -> tuple[None, float]:
    """Worker task: zarr shard ``shard_index`` (its only writer) from the spills' encoded chunks."""
    from chammi_data.writer import write_zarr_shard

    t0 = time.perf_counter()
    write_zarr_shard(root, source, shard_index, zarr_start, _load_shard(entries, "zarr"))
    return None, time.perf_counter() - t0


# --- the client side ------------------------------------------------------------------------------------------

def resolve_sources(source: str | Sequence[str]) -> list[str]:
    """``all`` -> the three raw sources; otherwise registered pipeline names (checked)."""
    names = [source] if isinstance(source, str) else list(source)
    out: list[str] = []
    for n in names:
        for m in (RAW_SOURCES if n == "all" else (n,)):
            get_pipeline(m)  # unknown name -> KeyError listing the valid ones
            if m not in out:
                out.append(m)
    if "chammi" in out and len(out) > 1:
        raise ValueError("--source chammi converts an official release on its own; do not combine it with raw sources")
    return out


def input_dirs(names: list[str], input_dir: Path | None, work: Path, seed: int, progress: bool) -> dict[str, Path]:
    """Each pipeline's raw folder: DIR itself for one source, DIR/<name> for several, or the sample data."""
    if input_dir is None:
        if "chammi" in names:
            raise ValueError("--source chammi needs --input CHAMMI_ROOT (a downloaded official release)")
        from pipelines.synthetic import ensure_sample

        input_dir = ensure_sample(work / "sample_raw", names, seed=seed, progress=progress)
        return {n: input_dir / n for n in names}
    if len(names) == 1:
        sub = input_dir / names[0]
        return {names[0]: sub if names[0] != "chammi" and sub.is_dir() and not _looks_like(input_dir, names[0]) else input_dir}
    return {n: input_dir / n for n in names}


def _looks_like(folder: Path, name: str) -> bool:
    """True when ``folder`` itself holds the source's top-level table (then it is not a parent folder)."""
    return any((folder / f).exists() for f in {"wtc11": ["metadata.csv"], "hpa": ["train.csv"], "cp": []}.get(name, []))


def _warm_up(names: list[str]) -> None:
    """Run on each worker before the first unit: import the pipelines (seconds on a cold process) and keep
    the worker on one core.

    A dask worker here is one thread on one core; zarr's codec pipeline would otherwise encode chunks on a
    thread pool as wide as the machine, so one worker used ~1.6 cores while writing shards and n workers
    fought over the same cores (measured: 0.45 s CPU in 0.27 s wall for one HPA shard). One thread per
    worker makes "n workers" mean n cores, locally and on an external cluster.
    """
    import zarr

    from chammi_data.schema import Cell
    from chammi_data.writer import encode_cell

    zarr.config.set({"threading.max_workers": 1})
    for name in names:
        get_pipeline(name)
    # first use of the zstd / Blosc encoders (contexts, thread-locals) happens here, not in the first unit
    encode_cell(Cell(np.ones((3, 8, 8), np.uint8), ("nucleus", "membrane", "protein"), "wtc11", "x", "warmup"))


def _make_client(workers: int, scheduler: str | None, processes: bool) -> tuple[Any, Any]:
    import dask
    from dask.distributed import Client, LocalCluster

    if scheduler:
        return Client(scheduler), None
    # dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536 in every worker; in glibc any explicit trim threshold also
    # freezes the mmap threshold at 128 KiB, so every image-sized numpy array becomes an mmap + page faults.
    # Measured: units ran 1.6-1.7x slower inside a worker than in-process (WTC, HPA, CP); unset, they match.
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        cluster = LocalCluster(n_workers=max(1, int(workers)), threads_per_worker=1, processes=processes,
                               dashboard_address=None, silence_logs=logging.ERROR)
    return Client(cluster), cluster


def build(sources: str | Sequence[str], input_dir: str | Path | None = None, output: str | Path | None = None,
          workers: int = 2, scheduler: str | None = None, config: Mapping[str, Any] | str | Path | None = None,
          strict: bool = False, progress: bool = True, seed: int = 0, processes: bool = True,
          keep_work: bool = False) -> BuildResult:
    """Build one release from ``sources`` (``wtc11|hpa|cp|chammi|all`` or a list) into ``output``.

    ``config``: a mapping merged over :data:`DEFAULT_CONFIG`, or a YAML path. ``strict``: any skipped
    item fails the build (no release is written; build_report.json says why). ``processes=False`` runs the
    local cluster's workers as threads (tests). Returns a :class:`BuildResult`; raises nothing for bad
    input (it is skipped and reported), only for unusable arguments or a source whose tables are missing.
    """

    t_start = time.perf_counter()
    names = resolve_sources(sources)
    cfg = load_config(config) if not isinstance(config, Mapping) else load_config(overrides=config)
    cfg_hash = config_hash(cfg)
    out = Path(output) if output is not None else default_release_dir()
    work = out / ".work"
    dirs = input_dirs(names, Path(input_dir) if input_dir is not None else None, work, seed, progress)
    timings: dict[str, float] = {}
    found: dict[str, tuple[Any, list[Unit], list[Skipped]]] = {}
    for name in names:  # discover first: a missing table fails before any cluster starts
        t0 = time.perf_counter()
        pipeline = get_pipeline(name)
        units, skipped = pipeline.discover(dirs[name], cfg)
        found[name] = (pipeline, sorted(units, key=lambda u: u.unit_id), list(skipped))
        timings[f"{name}.discover_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    client, cluster = _make_client(workers, scheduler, processes)
    try:
        client.run(_warm_up, names)  # imports on every worker now, so unit timings measure the work
        timings["cluster_start_s"] = time.perf_counter() - t0
        return _run(client, names, found, dirs, cfg, cfg_hash, out, work, strict, progress, timings, t_start, keep_work)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


#: dask priority of shard-writing tasks: they run before the unit tasks of the sources still in progress
WRITE_PRIORITY = 10


def _run(client: Any, names: list[str], found: dict[str, tuple[Any, list[Unit], list[Skipped]]], dirs: dict[str, Path],
         cfg: dict[str, Any], cfg_hash: str, out: Path, work: Path, strict: bool, progress: bool,
         timings: dict[str, float], t_start: float, keep_work: bool) -> BuildResult:
    """Units of every source on the cluster at once; a source's shards are written as soon as its units are done.

    Overlapping the writing of one source (file I/O) with the units of the next keeps the workers busy in a
    ``--source all`` build. With ``strict`` nothing is written until every source is known to have no skip.
    Which worker writes what, and when, does not change a byte of the output.
    """
    from dask.distributed import as_completed
    from tqdm.auto import tqdm

    t_units = time.perf_counter()
    per_source: dict[str, dict[str, Any]] = {}
    owner: dict[Any, str] = {}
    left: dict[str, int] = {}
    bars: dict[str, Any] = {}
    for k, name in enumerate(names):
        pipeline, units, skipped = found[name]
        unit_dir = work / name / "units"
        unit_hash = unit_config_hash(cfg, name)
        results: dict[str, dict[str, Any]] = {}
        todo: list[tuple[Unit, str, str]] = []
        for unit in units:
            path, key = unit_dir / f"{unit.unit_id}.spill", spill_key(name, unit, unit_hash)
            done = read_spill_meta(path, key)
            if done is not None:
                results[unit.unit_id] = {"records": done[0], "skipped": [s.to_dict() for s in done[1]]}
            else:
                todo.append((unit, str(path), key))
        # small units travel in batches (each still spilled on its own, so resume stays per unit)
        per_task = max(1, int(pipeline.units_per_task))
        for i in range(0, len(todo), per_task):
            owner[client.submit(run_units, name, todo[i:i + per_task], cfg, pure=False)] = name
        left[name] = -(-len(todo) // per_task)
        per_source[name] = {"pipeline": pipeline, "units": units, "discover_skipped": skipped, "results": results,
                            "reused": len(units) - len(todo), "dir": dirs[name], "busy": 0.0}
        bars[name] = tqdm(total=len(units), initial=len(results), desc=f"{name}: units", unit="unit",
                          disable=not progress, position=k)
    writing = _Writing(client, out, cfg, progress)
    prepared: dict[str, tuple[list[dict[str, Any]], list[Skipped], list[dict[str, Any]]]] = {}

    write_start = [0.0]

    def source_done(name: str) -> None:
        info = per_source[name]
        timings[f"{name}.process_s"] = time.perf_counter() - t_units
        timings[f"{name}.worker_busy_s"] = info.pop("busy")
        bars[name].close()
        t_assign = time.perf_counter()
        prepared[name] = _prepare(name, info, cfg, work)
        timings["assign_s"] = timings.get("assign_s", 0.0) + time.perf_counter() - t_assign
        write_start[0] = time.perf_counter()
        if not strict:
            writing.submit(prepared[name][0])

    for name in names:
        if left[name] == 0:
            source_done(name)
    for fut in as_completed(list(owner)):
        name = owner.pop(fut)
        for res in fut.result():
            per_source[name]["results"][res["unit_id"]] = res
            per_source[name]["busy"] += res["seconds"]
            bars[name].update(1)
        left[name] -= 1
        if left[name] == 0:
            source_done(name)
    ordered = [c for n in names for c in prepared[n][0]]
    all_skipped = [s for n in names for s in prepared[n][1]]
    unassigned = [u for n in names for u in prepared[n][2]]
    result = BuildResult(output=out, sources=names, config_hash=cfg_hash, cells=ordered, skipped=all_skipped,
                         unassigned=unassigned, per_source=per_source, timings=timings)
    if strict and (all_skipped or not ordered):
        result.failed = f"--strict: {len(all_skipped)} skipped item(s)" if all_skipped else "no cells"
        return result.write_report(t_start)
    if not ordered:
        result.failed = "no cells were produced; see the skipped items"
        return result.write_report(t_start)
    if strict:
        write_start[0] = time.perf_counter()
        for name in names:
            writing.submit(prepared[name][0])
    records = writing.collect()
    # from the last source's writing set-up (old outputs cleared, zarr arrays, tasks) to its last shard: for one
    # source all of its writing, for several the part that did not overlap with units
    timings["write_s"] = time.perf_counter() - write_start[0]
    timings["write_busy_s"] = writing.busy
    from chammi_data.writer import finalize_release

    rules = {name: _rules_digest(name, cfg) for name in names}
    extra = {"sources_built": names, "rules_sha256": rules, "skipped": result.skip_counts(),
             "unassigned": len(unassigned)}
    result.release_json = finalize_release(out, None, records, cfg, extra)
    if not keep_work:
        for name in names:
            shutil.rmtree(work / name, ignore_errors=True)
        if work.is_dir() and not any(work.iterdir()):
            work.rmdir()
    return result.write_report(t_start)


def _prepare(name: str, info: dict[str, Any], cfg: dict[str, Any],
             work: Path) -> tuple[list[dict[str, Any]], list[Skipped], list[dict[str, Any]]]:
    """A finished source's cells (deduplicated, assigned to splits and tasks, in release order), skips, unassigned."""
    cells, skipped = dedupe(name, info["units"], info["results"], str(work / name / "units"))
    skipped = list(info["discover_skipped"]) + skipped
    info["skipped"] = skipped
    missing: list[dict[str, Any]] = []
    if cells:
        assigned = info["pipeline"].assign(cell_table(cells), cfg)
        cells, missing = assemble(name, cells, assigned)
        cells = order_cells(cells, info["pipeline"].order)
    return cells, skipped, missing


class _Writing:
    """Shard writing on the cluster, source by source: the first call clears the old outputs, each source gets
    its zarr array, then two tasks per shard (tar and zarr: different files, one writer each) that only
    concatenate the bytes the workers encoded in the unit phase."""

    def __init__(self, client: Any, out: Path, cfg: dict[str, Any], progress: bool):
        self.client, self.out, self.cfg, self.progress = client, out, cfg, progress
        self.futures: list[Any] = []
        self.cleared = False
        self.busy = 0.0

    def submit(self, cells: list[dict[str, Any]]) -> None:
        from chammi_data.writer import create_zarr_array

        if not cells:
            return
        if not self.cleared:
            for stale in ("shards", "zarr", "manifest.parquet", "manifest.csv", "release.json"):
                p = self.out / stale
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
            self.cleared = True
        for src, src_plans in plan_shards(cells, self.cfg["cells_per_shard"]).items():
            info = SOURCES[src]
            first = next(c for c in cells if c["source"] == src)
            n = sum(len(p["entries"]) for p in src_plans)
            create_zarr_array(self.out, src, n, info.channels, info.tile_hw, first.get("dtype", "uint8"),
                              self.cfg["cells_per_shard"])
            for p in src_plans:
                entries = canonical_json(p["entries"])
                self.futures += [self.client.submit(task, str(self.out), src, p["index"], p["zarr_start"], entries,
                                                    pure=False, priority=WRITE_PRIORITY)
                                 for task in (write_zarr_task, write_tar_task)]

    def collect(self) -> list[Any]:
        """Wait for every write task; the shard records sorted by path."""
        from dask.distributed import as_completed
        from tqdm.auto import tqdm

        records = []
        bar = tqdm(total=len(self.futures), desc="writing shards", unit="file", disable=not self.progress)
        for fut in as_completed(self.futures):
            rec, seconds = fut.result()
            self.busy += seconds
            if rec is not None:
                records.append(rec)
            bar.update(1)
        bar.close()
        return sorted(records, key=lambda r: r.path)


def _rules_digest(name: str, cfg: dict[str, Any]) -> str:
    from pipelines.tasks import load_rules, rules_digest

    if name == "chammi":
        return "official"
    try:
        return rules_digest(load_rules(name, cfg))
    except FileNotFoundError:
        return ""
