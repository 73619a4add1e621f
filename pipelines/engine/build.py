"""The curation engine: source pipelines on dask.distributed -> one reproducible, resumable release.

Per build: open the output (a folder or an object store, :func:`pipelines.engine.output_store.open_output`),
take its lock and check that it holds nothing but a chammi-build release -> discover every pipeline's units
(sorted) from its input location (:mod:`pipelines.engine.inputs`) -> run ``process`` on each unit not done yet
as a dask task (the units of all sources are queued at once; :mod:`pipelines.engine.worker`), each unit
spilled to ``.work/<name>/units/<unit_id>.spill`` in the output's store (:mod:`pipelines.engine.spill`) ->
as soon as a pipeline's units are done: its ledger (:mod:`pipelines.engine.ledger`) deduplicates, assigns
splits and tasks and orders the cells -> its shards are written by dask tasks
(:mod:`pipelines.engine.writing`) into the release's sink (the staging folder; for an object store the
generation prefix, known once every source is done) while other pipelines' units still run (``--strict``:
only once no pipeline has a skip) -> ``finalize_release`` -> publish (:mod:`pipelines.engine.output`) ->
build_report.json (:mod:`pipelines.engine.report`). A failed build leaves the previous release untouched and
writes ``build_report.failed.json``.

Every build checks its accounting: per pipeline and kind of item, ``in == used + skipped``
(:mod:`pipelines.engine.ledger`); an item dropped without a skip entry fails the build.

Why the output bytes do not depend on workers, scheduling, interruption or where the data lie: cell ids come
from raw identifiers, provenance paths are relative to the input's root, cells are sorted before shards are
planned, each shard is written by exactly one task from spills whose content depends only on (unit,
options), and nothing run-dependent (paths, times, worker counts, locations) goes into release.json. A rerun
after SIGKILL reuses every complete spill whose key matches.

The engine knows the pipelines only through what they declare (``pipelines.sources.base.SourcePipeline``).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from chammi_data.errors import UserError
from chammi_data.store.paths import default_release_location
from pipelines.engine.build_config import config_hash, load_config, source_options
from pipelines.engine.cluster import blind_workers, start_cluster
from pipelines.engine.inputs import discover_all, input_dirs
from pipelines.engine.ledger import SourceLedger
from pipelines.engine.output_store import open_output, release_generation
from pipelines.engine.report import BuildResult
from pipelines.engine.spill import UnitOutcome, clear_cache, read_spill_outcomes, spill_key
from pipelines.engine.worker import RETRY_LOGGER, run_units, warm_up
from pipelines.engine.writing import ShardWriting
from pipelines.sources.base import Unit
from pipelines.sources.registry import resolve_sources


class DiskFull(UserError):
    """The output's disk is full; the message names the path and the bytes needed, and what was kept."""


def build(
    sources: str | Sequence[str],
    input_dir: str | Path | Mapping[str, Any] | None = None,
    output: str | Path | None = None,
    workers: int = 2,
    scheduler: str | None = None,
    config: Mapping[str, Any] | str | Path | None = None,
    strict: bool = False,
    progress: bool = True,
    seed: int = 0,
    processes: bool = True,
    keep_work: bool = False,
    input_options: Mapping[str, Any] | None = None,
    output_options: Mapping[str, Any] | None = None,
) -> BuildResult:
    """Build one release from ``sources`` (``wtc11|hpa|cp|chammi|all`` or a list) into ``output``.

    ``input_dir`` and ``output`` are locations: folders, or URLs (``s3://``, ``gs://``, any fsspec URL;
    ``input_dir`` also ``http(s)://``; or ``{source: location or [locations]}``, see
    :mod:`pipelines.engine.inputs`), read and written with ``input_options`` / ``output_options`` (fsspec
    storage options, e.g. ``{"anon": True}`` for a public bucket; credentials otherwise from the standard
    chains). ``config``: a mapping merged over :data:`pipelines.engine.build_config.DEFAULT_CONFIG`, or a YAML
    path. ``strict``: any skipped item fails the build. A failed build publishes nothing: the previous
    release and its build_report.json stay, ``build_report.failed.json`` says why. ``keep_work``: keep
    ``.work`` (unit spills, generated sample data) after a success. ``processes=False`` runs the local
    cluster's workers as threads (tests). Returns a :class:`BuildResult`; raises nothing for bad input (it is
    skipped and reported), only for unusable arguments, a source whose tables are missing, an output another
    build holds (:class:`pipelines.engine.output.OutputLocked`) or that holds files chammi-build did not
    write, a full disk (:class:`DiskFull`), or a raw object that stays unreadable after every retry.
    """
    t_start = time.perf_counter()
    pipelines = resolve_sources(sources)
    cfg = load_config(config) if not isinstance(config, Mapping) else load_config(overrides=config)
    options = source_options(pipelines, cfg)
    out = open_output(
        output if output is not None else default_release_location(), dict(output_options or {})
    )
    with out:
        out.check_contents()
        out.clear_leftovers()
        try:
            result = _build_in(
                out,
                pipelines,
                options,
                cfg,
                input_dir,
                input_options,
                workers,
                scheduler,
                processes,
                strict,
                progress,
                seed,
            )
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise _disk_full(out, exc) from None
        if result.ok:
            result.release_json = out.publish(result.sink)
        out.finish(result.ok, keep_work)
        return result.write_report(t_start)


@contextlib.contextmanager
def _quiet_retries() -> Iterator[None]:
    """No log line per retried remote request during a build (the workers do the same, see
    ``worker.warm_up``): what stays unreadable stops the build with one error naming it."""
    logger = logging.getLogger(RETRY_LOGGER)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _build_in(
    out: Any,
    pipelines: dict[str, Any],
    options: dict[str, dict[str, Any]],
    cfg: dict[str, Any],
    input_dir: Any,
    input_options: Mapping[str, Any] | None,
    workers: int,
    scheduler: str | None,
    processes: bool,
    strict: bool,
    progress: bool,
    seed: int,
) -> BuildResult:
    """Discover, run the units and write the release into its sink (not yet published)."""
    inputs = input_dirs(pipelines, options, input_dir, out, seed, progress, input_options)
    timings: dict[str, float] = {}
    ledgers: dict[str, SourceLedger] = {}
    # discover first: a missing table fails before any cluster starts
    for name, pipeline in pipelines.items():
        t0 = time.perf_counter()
        discovery = discover_all(pipeline, inputs[name], options[name])
        spills = f"{out.work}/{name}/units"
        where = inputs[name][0] if len(inputs[name]) == 1 else inputs[name]
        ledgers[name] = SourceLedger(name, pipeline, options[name], where, spills, discovery)
        timings[f"{name}.discover_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with start_cluster(workers, scheduler, processes) as client:
        if scheduler:
            out.check_workers(client)
            check_inputs_visible(client, inputs)
        # imports on every worker now, so unit timings measure the work
        all_inputs = [r for rs in inputs.values() for r in rs]
        client.run(warm_up, list(pipelines), [out.store, *all_inputs])
        timings["cluster_start_s"] = time.perf_counter() - t0
        run = _BuildRun(
            client, ledgers, cfg, out, strict, progress, timings, [r for rs in inputs.values() for r in rs]
        )
        try:
            result = run.run()
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT) and not hasattr(exc, "chammi_needed"):
                exc.chammi_needed = _bytes_needed(ledgers, out)  # type: ignore[attr-defined]
            raise
        if not out.is_local:  # the workers' copies of the spills: the shards are written
            client.run(clear_cache, out.store)
        return result


def check_inputs_visible(client: Any, inputs: Mapping[str, Any]) -> None:
    """Refuse a cluster whose workers cannot see a local input folder (no shared filesystem): every unit
    would be skipped as missing. Inputs at URLs are read by the workers themselves."""
    for name, raw in ((n, r) for n, rs in inputs.items() for r in rs):
        if not raw.is_local:
            continue
        blind = blind_workers(client, os.path.isdir, raw.url)
        if blind:
            raise UserError(
                f"the dask workers {', '.join(blind[:3])} cannot see the {name} input folder {raw.url} (no "
                "shared filesystem): put the raw data in an object store (--input s3://...) or on a "
                "filesystem every worker mounts"
            )


def _bytes_needed(ledgers: dict[str, SourceLedger], out: Any) -> int | None:
    """Bytes the rest of the build still needs to write (None before any unit is done): the spills of the
    units left and the release, both estimated from the spills written so far."""
    spills = [f for f in out.store.list_files(out.work) if f.endswith(".spill") and "/units/" in f]
    sizes = [(out.store.info(f) or {}).get("size", 0) for f in spills[:200]]
    if not sizes:
        return None
    per_unit = sum(sizes) / len(sizes)
    units = sum(len(ledger.units) for ledger in ledgers.values())
    return int(per_unit * (units - len(spills)) + per_unit * units)


def _disk_full(out: Any, exc: OSError) -> DiskFull:
    """One line: where the disk filled, how much more the build needs, what was kept for a rerun."""
    import shutil

    from pipelines.engine.output import STAGING

    if out.is_local:
        shutil.rmtree(out.path / STAGING, ignore_errors=True)  # the partial release: nothing to resume from
    free = out.free_bytes() if out.is_local else None
    need = getattr(exc, "chammi_needed", None)
    done = sum(1 for f in out.store.list_files(out.work) if f.endswith(".spill") and "/units/" in f)
    what = f"needs about {need / 1e6:.1f} MB more" if need else "needs more space"
    have = f" ({free / 1e6:.1f} MB free)" if free is not None else ""
    kept = (
        f"the {done} finished unit(s) are kept in {out.location}/{out.work}: free some space and rerun the "
        "same command to resume"
        if done
        else "no unit was finished: free some space and rerun"
    )
    return DiskFull(
        f"disk full writing {exc.filename or out.location}: the build {what}{have}; the partial release was "
        f"removed, {kept}"
    )


class _BuildRun:
    """One build on a running cluster: every pipeline's units at once, a pipeline's shards written as soon as
    its units are done (for an object-store output: once every pipeline is done, since the release's
    generation prefix names its whole content).

    Overlapping the writing of one source (file I/O) with the units of the next keeps the workers busy in a
    ``--source all`` build. With ``strict`` nothing is written until every source is known to have no skip.
    """

    def __init__(
        self,
        client: Any,
        ledgers: dict[str, SourceLedger],
        cfg: dict[str, Any],
        out: Any,
        strict: bool,
        progress: bool,
        timings: dict[str, float],
        inputs: list[Any],
    ):
        self.client, self.ledgers, self.cfg, self.out = client, ledgers, cfg, out
        self.strict, self.progress, self.timings, self.inputs = strict, progress, timings, inputs
        self.deferred = strict or out.needs_generation_first  # shards only after every source is done
        self.writing: ShardWriting | None = None
        if not out.needs_generation_first:
            self.writing = ShardWriting(client, out.sink(), cfg["cells_per_shard"], progress, out.store)
        self.unbalanced: list[str] = []  # accounting lines that do not add up
        self.owner: dict[Any, str] = {}  # unit task future -> pipeline name
        self.bars: dict[str, Any] = {}
        self.t_units = 0.0
        self.write_started = 0.0  # when the last pipeline's writing was submitted

    def run(self) -> BuildResult:
        from dask.distributed import as_completed

        self.t_units = time.perf_counter()
        for ledger in self.ledgers.values():
            self._submit_units(ledger)
        for ledger in self.ledgers.values():
            if ledger.tasks_left == 0:
                self._source_done(ledger)
        for fut in as_completed(list(self.owner)):
            ledger = self.ledgers[self.owner.pop(fut)]
            for res in fut.result():
                ledger.record(res["unit_id"], UnitOutcome.from_dict(res))
                ledger.where[res["unit_id"]] = res.get("worker", "")
                ledger.busy_s += res["seconds"]
                self.bars[ledger.name].update(1)
            ledger.tasks_left -= 1
            if ledger.tasks_left == 0:
                self._source_done(ledger)
        return self._finish()

    def _submit_units(self, ledger: SourceLedger) -> None:
        """Reuse every current spill; queue the other units, in batches of the pipeline's
        ``units_per_task``."""
        from chammi_data.progress import progress as progress_bar

        codec = self.cfg.get("codec", "zstd")  # the member codec: a spill of another codec is recomputed
        options_hash = config_hash(ledger.options if codec == "zstd" else {**ledger.options, "codec": codec})
        keys = [(ledger.spill_path(u), spill_key(ledger.name, u, options_hash)) for u in ledger.units]
        ledger.keys = {u.unit_id: key for u, (_, key) in zip(ledger.units, keys, strict=True)}
        todo: list[tuple[Unit, str, str]] = []
        for unit, (path, key), done in zip(
            ledger.units, keys, read_spill_outcomes(self.out.store, keys), strict=True
        ):
            if done is not None:
                ledger.record(unit.unit_id, done)
            else:
                todo.append((unit, path, key))
        ledger.reused = len(ledger.units) - len(todo)
        # small units travel in batches (each still spilled on its own, so resume stays per unit)
        per_task = max(1, int(ledger.pipeline.units_per_task))
        for i in range(0, len(todo), per_task):
            fut = self.client.submit(
                run_units,
                ledger.name,
                todo[i : i + per_task],
                ledger.options,
                self.out.store,
                self.inputs,
                codec,
                pure=False,
            )
            self.owner[fut] = ledger.name
        ledger.tasks_left = -(-len(todo) // per_task)
        self.bars[ledger.name] = progress_bar(
            total=len(ledger.units),
            initial=ledger.reused,
            desc=f"{ledger.name}: units",
            unit="unit",
            disable=not self.progress,
        )

    def _source_done(self, ledger: SourceLedger) -> None:
        self.timings[f"{ledger.name}.process_s"] = time.perf_counter() - self.t_units
        self.timings[f"{ledger.name}.worker_busy_s"] = ledger.busy_s
        self.bars[ledger.name].close()
        t_assign = time.perf_counter()
        ledger.finish(self.cfg)
        self.timings["assign_s"] = self.timings.get("assign_s", 0.0) + time.perf_counter() - t_assign
        unbalanced = ledger.mismatches()
        self.unbalanced += [f"{ledger.name} {line}" for line in unbalanced]
        self.write_started = time.perf_counter()
        if not self.deferred and not self.unbalanced and self.writing is not None:
            self._check_space(ledger.cells)
            self.writing.submit(ledger.cells)

    def _check_space(self, cells: list[dict[str, Any]]) -> None:
        """Refuse to start writing shards that cannot fit (a local output: its free space is known)."""
        free = self.out.free_bytes()
        need = sum(c["tar"][1] + c["zarr"][1] + 2048 for c in cells)
        if free is not None and need > free:
            exc = OSError(errno.ENOSPC, "no space left", str(self.out.location))
            exc.chammi_needed = need  # type: ignore[attr-defined]
            raise exc

    def _finish(self) -> BuildResult:
        """Every unit is back: fail (accounting that does not add up, strict with skips, no cells), or write
        the shards (if not written yet) and finalize the release in its sink."""
        from chammi_data.format.writer import finalize_release

        result = BuildResult(
            output=self.out.location,
            sources=list(self.ledgers),
            config_hash=config_hash(self.cfg),
            ledgers=self.ledgers,
            timings=self.timings,
            writer=self.out.write_report,
        )
        if self.unbalanced:
            if self.writing is not None:
                self.writing.drain()
            result.failed = "accounting does not add up (items lost without a skip entry): " + "; ".join(
                self.unbalanced
            )
            return result
        if self.strict and (result.skipped or not result.cells):
            result.failed = (
                f"--strict: {len(result.skipped)} skipped item(s)" if result.skipped else "no cells"
            )
            return result
        if not result.cells:
            if self.writing is not None:
                self.writing.drain()
            result.failed = "no cells were produced; see the skipped items"
            return result
        rules = {name: ledger.pipeline.rules_digest(self.cfg) for name, ledger in self.ledgers.items()}
        extra: dict[str, Any] = {
            "sources_built": list(self.ledgers),
            "rules_sha256": rules,
            "skipped": result.skip_counts(),
            "unassigned": len(result.unassigned),
        }
        extra["generation"] = release_generation(result.cells, self.cfg, extra)
        if self.writing is None:
            sink = self.out.sink(extra["generation"])
            self.writing = ShardWriting(
                self.client, sink, self.cfg["cells_per_shard"], self.progress, self.out.store
            )
        if self.deferred:
            self.write_started = time.perf_counter()
            self._check_space(result.cells)
            for ledger in self.ledgers.values():
                self.writing.submit(ledger.cells)
        records = self.writing.collect()
        # from the last source's writing set-up (old outputs cleared, zarr arrays, tasks) to its last shard:
        # for one source all of its writing, for several the part that did not overlap with units
        self.timings["write_s"] = time.perf_counter() - self.write_started
        self.timings["write_busy_s"] = self.writing.busy_s
        finalize_release(self.writing.sink.mirror, None, records, self.cfg, extra)
        result.sink = self.writing.sink
        return result
