"""The curation engine: source pipelines on dask.distributed -> one reproducible, resumable release.

Per build: discover every pipeline's units (sorted) -> run ``process`` on each unit not done yet as a dask
task (the units of all sources are queued at once; :mod:`pipelines.engine.worker`), each unit spilled to
``OUTPUT/.work/<name>/units/<unit_id>.spill`` (:mod:`pipelines.engine.spill`) -> as soon as a pipeline's units
are done: its ledger (:mod:`pipelines.engine.ledger`) deduplicates, assigns splits and tasks and orders the
cells -> its shards are written by dask tasks (:mod:`pipelines.engine.writing`) into ``OUTPUT/.staging`` while
other pipelines' units still run (``--strict``: only once no pipeline has a skip) -> ``finalize_release`` in
the staging folder -> the staged release replaces the one in ``OUTPUT`` -> build_report.json
(:mod:`pipelines.engine.report`). The whole build holds an exclusive lock on ``OUTPUT``; a failed build leaves
the previous release untouched and writes ``build_report.failed.json`` (:mod:`pipelines.engine.output`).

Every build checks its accounting: per pipeline and kind of item, ``in == used + skipped``
(:mod:`pipelines.engine.ledger`); an item dropped without a skip entry fails the build.

Why the output bytes do not depend on workers, scheduling or interruption: cell ids come from raw
identifiers, cells are sorted before shards are planned, each shard is written by exactly one task from
spills whose content depends only on (unit, options), and nothing run-dependent (paths, times, worker
counts) goes into release.json. A rerun after SIGKILL reuses every complete spill whose key matches.

The engine knows the pipelines only through what they declare (``pipelines.sources.base.SourcePipeline``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from chammi_data.store.paths import default_release_location
from pipelines.engine.build_config import config_hash, load_config, source_options
from pipelines.engine.cluster import start_cluster
from pipelines.engine.inputs import input_dirs, is_url
from pipelines.engine.ledger import SourceLedger
from pipelines.engine.output import STAGING, WORK, OutputLock, clear_leftovers, finish_output, publish
from pipelines.engine.report import BuildResult
from pipelines.engine.spill import UnitOutcome, read_spill_outcome, spill_key
from pipelines.engine.worker import run_units, warm_up
from pipelines.engine.writing import ShardWriting
from pipelines.sources.base import Unit
from pipelines.sources.registry import resolve_sources


def build(
    sources: str | Sequence[str],
    input_dir: str | Path | None = None,
    output: str | Path | None = None,
    workers: int = 2,
    scheduler: str | None = None,
    config: Mapping[str, Any] | str | Path | None = None,
    strict: bool = False,
    progress: bool = True,
    seed: int = 0,
    processes: bool = True,
    keep_work: bool = False,
) -> BuildResult:
    """Build one release from ``sources`` (``wtc11|hpa|cp|chammi|all`` or a list) into ``output``.

    ``config``: a mapping merged over :data:`pipelines.engine.build_config.DEFAULT_CONFIG`, or a YAML path.
    ``strict``: any skipped item fails the build. A failed build publishes nothing: the previous release and
    its build_report.json stay, ``build_report.failed.json`` says why. ``keep_work``: keep ``OUTPUT/.work``
    (unit spills, generated sample data) after a success. ``processes=False`` runs the local cluster's
    workers as threads (tests). Returns a :class:`BuildResult`; raises nothing for bad input (it is skipped
    and reported), only for unusable arguments, a source whose tables are missing, or an output folder that
    another build holds (:class:`pipelines.engine.output.OutputLocked`).
    """
    t_start = time.perf_counter()
    pipelines = resolve_sources(sources)
    cfg = load_config(config) if not isinstance(config, Mapping) else load_config(overrides=config)
    options = source_options(pipelines, cfg)
    out = Path(output) if output is not None else Path(default_release_location())
    with OutputLock(out):
        clear_leftovers(out)
        work = out / WORK
        source_dir = input_dir if input_dir is None or is_url(input_dir) else Path(input_dir)
        dirs = input_dirs(pipelines, options, source_dir, work, seed, progress)
        timings: dict[str, float] = {}
        ledgers: dict[str, SourceLedger] = {}
        # discover first: a missing table fails before any cluster starts
        for name, pipeline in pipelines.items():
            t0 = time.perf_counter()
            discovery = pipeline.discover(dirs[name], options[name])
            ledgers[name] = SourceLedger(
                name, pipeline, options[name], dirs[name], work / name / "units", discovery
            )
            timings[f"{name}.discover_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        with start_cluster(workers, scheduler, processes) as client:
            # imports on every worker now, so unit timings measure the work
            client.run(warm_up, list(pipelines))
            timings["cluster_start_s"] = time.perf_counter() - t0
            result = _BuildRun(client, ledgers, cfg, out, strict, progress, timings).run()
        if result.ok:
            result.release_json = publish(out / STAGING, out)
        finish_output(out, result.ok, keep_work)
        return result.write_report(t_start)


class _BuildRun:
    """One build on a running cluster: every pipeline's units at once, a pipeline's shards written as soon as
    its units are done.

    Overlapping the writing of one source (file I/O) with the units of the next keeps the workers busy in a
    ``--source all`` build. With ``strict`` nothing is written until every source is known to have no skip.
    """

    def __init__(
        self,
        client: Any,
        ledgers: dict[str, SourceLedger],
        cfg: dict[str, Any],
        out: Path,
        strict: bool,
        progress: bool,
        timings: dict[str, float],
    ):
        self.client, self.ledgers, self.cfg, self.out = client, ledgers, cfg, out
        self.strict, self.progress, self.timings = strict, progress, timings
        self.staging = out / STAGING
        self.writing = ShardWriting(client, self.staging, cfg["cells_per_shard"], progress)
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
        todo: list[tuple[Unit, str, str]] = []
        for unit in ledger.units:
            path, key = ledger.spill_path(unit), spill_key(ledger.name, unit, options_hash)
            done = read_spill_outcome(path, key)
            if done is not None:
                ledger.record(unit.unit_id, done)
            else:
                todo.append((unit, str(path), key))
        ledger.reused = len(ledger.units) - len(todo)
        # small units travel in batches (each still spilled on its own, so resume stays per unit)
        per_task = max(1, int(ledger.pipeline.units_per_task))
        for i in range(0, len(todo), per_task):
            fut = self.client.submit(
                run_units, ledger.name, todo[i : i + per_task], ledger.options, codec, pure=False
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
        if not self.strict and not self.unbalanced:
            self.writing.submit(ledger.cells)

    def _finish(self) -> BuildResult:
        """Every unit is back: fail (accounting that does not add up, strict with skips, no cells), or wait
        for the shards and finalize the release in the staging folder."""
        from chammi_data.format.writer import finalize_release

        result = BuildResult(
            output=self.out,
            sources=list(self.ledgers),
            config_hash=config_hash(self.cfg),
            ledgers=self.ledgers,
            timings=self.timings,
        )
        if self.unbalanced:
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
            result.failed = "no cells were produced; see the skipped items"
            return result
        if self.strict:
            self.write_started = time.perf_counter()
            for ledger in self.ledgers.values():
                self.writing.submit(ledger.cells)
        records = self.writing.collect()
        # from the last source's writing set-up (old outputs cleared, zarr arrays, tasks) to its last shard:
        # for one source all of its writing, for several the part that did not overlap with units
        self.timings["write_s"] = time.perf_counter() - self.write_started
        self.timings["write_busy_s"] = self.writing.busy_s
        rules = {name: ledger.pipeline.rules_digest(self.cfg) for name, ledger in self.ledgers.items()}
        extra = {
            "sources_built": list(self.ledgers),
            "rules_sha256": rules,
            "skipped": result.skip_counts(),
            "unassigned": len(result.unassigned),
        }
        finalize_release(self.staging, None, records, self.cfg, extra)
        return result
