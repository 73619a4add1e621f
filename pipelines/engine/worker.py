"""The unit tasks a build runs on its dask workers: process units into spills, and the warm-up.

Every task takes and returns small, plain values (names, paths, records, stores): pixels never travel between
the workers and the client, and a worker needs no disk that the client sees - it reads the raw objects of its
units from their location and writes each unit's spill into the output's store. A pipeline is looked up by
name once per worker process. The shard-writing tasks live with the shard plan in
:mod:`pipelines.engine.writing`.
"""

from __future__ import annotations

import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from chammi_data.format.schema import Cell
from chammi_data.format.vocab import SOURCES, is_variable
from chammi_data.store.objects import ObjectStore
from chammi_data.store.storage import RemoteReadError
from pipelines.engine.spill import write_spill
from pipelines.sources.base import Skipped, Unit, UnitResult, UnitSkip
from pipelines.sources.registry import shared_pipeline
from pipelines.steps.rawinput import RawInput, bind, raw_input


def check_cells(result: UnitResult, unit: Unit, makes: tuple[str, ...], kind: str = "cells") -> UnitResult:
    """Keep cells that fit their source's tile and channels; the rest become skips of ``kind`` (wrong
    shape...). A variable source's cells may have any size; their channels were checked by ``Cell``."""
    good: list[Cell] = []
    skipped = list(result.skipped)
    for cell in result.cells:
        info = SOURCES.get(cell.source)
        problem = ""
        if cell.source not in makes or (info is None and not is_variable(cell.source)):
            problem = f"cell source {cell.source!r} not made by this pipeline ({sorted(makes)})"
        elif info is None:
            pass
        elif cell.channels != info.channels:
            problem = f"channels {list(cell.channels)} != {cell.source} channels {list(info.channels)}"
        elif cell.image.shape[1:] != info.tile_hw:
            problem = f"wrong shape {tuple(cell.image.shape)}; {cell.source} tiles are {info.tile_hw}"
        if problem:
            skipped.append(
                Skipped(
                    unit.source,
                    unit.unit_id,
                    f"{problem} (cell {cell.cell_id})",
                    str(cell.meta.get("file", "")),
                    cell.meta.get("row"),
                    kind=kind,
                )
            )
        else:
            good.append(cell)
    return UnitResult(good, skipped, result.found)


def run_unit(
    name: str,
    unit: Unit,
    opts: dict[str, Any],
    store: ObjectStore,
    spill: str,
    key: str,
    uploads: Any = None,
    pending: list[Any] | None = None,
    codec: str = "zstd",
) -> dict[str, Any]:
    """Process one unit with the options of pipeline ``name`` and spill it to ``spill`` in ``store``; returns
    the unit's outcome (``UnitOutcome.to_dict()``: records, skips, found, ok - never the pixels), its id and
    the seconds it took.

    A unit that fails as a whole (``UnitSkip``, an unexpected error, or neither cells nor skips) becomes one
    skip of the pipeline's ``unit_kind`` standing for all the unit's items; a skip from ``process`` without a
    kind is of the pipeline's ``cell_kind``. A raw object that still cannot be read after every retry
    (``RemoteReadError``: a server down, a network gone) is not the unit's fault: it stops the build, naming
    the object, and a rerun resumes from the spills.
    """
    t0 = time.perf_counter()
    pipeline = shared_pipeline(name)

    def whole_unit(reason: str, file: str = "", row: int | str | None = None) -> UnitResult:
        return UnitResult(
            [], [Skipped(unit.source, unit.unit_id, reason, file, row, unit.items, pipeline.unit_kind)]
        )

    ok = False
    try:
        result = pipeline.process(unit, opts)
        ok = bool(result.cells or result.skipped)
    except UnitSkip as exc:
        result = whole_unit(exc.reason, exc.file, exc.row)
    except RemoteReadError:
        raise
    except Exception as exc:  # a bug or an input we did not foresee: never crash the build, report it
        tb = traceback.format_exc(limit=3).strip().splitlines()[-1]
        result = whole_unit(f"error: {type(exc).__name__}: {exc} [{tb}]")
    else:
        if not ok:
            result = whole_unit("no cells found in unit", str(unit.payload.get("file", "")))
        for s in result.skipped:
            s.kind = s.kind or pipeline.cell_kind
    result = check_cells(result, unit, pipeline.makes, pipeline.cell_kind)
    outcome = write_spill(store, spill, key, result, ok, uploads, pending, codec)
    return {"unit_id": unit.unit_id, **outcome.to_dict(), "seconds": time.perf_counter() - t0}


def run_units(
    name: str,
    batch: list[tuple[Unit, str, str]],
    opts: dict[str, Any],
    store: ObjectStore,
    inputs: list[RawInput],
    codec: str = "zstd",
) -> list[dict[str, Any]]:
    """Worker task: :func:`run_unit` over a batch of (unit, spill path in ``store``, spill key); image
    members in ``codec``.

    ``inputs`` (the build's raw inputs, with their storage options) are bound first, so the pipeline's
    ``raw_input(payload["root"])`` finds them; on an object store the objects of every unit of the batch
    (``SourcePipeline.unit_files``) are fetched ahead, several at once, while the first units compute.
    """
    bind(inputs)
    pipeline = shared_pipeline(name)
    prefetched = []
    for unit, _, _ in batch:
        root = unit.payload.get("root")
        if isinstance(root, str):
            raw = raw_input(root)
            if not raw.is_local:
                raw.prefetch(pipeline.unit_files(unit))
                prefetched.append(raw)
    pending: list[Any] = []
    try:
        with ThreadPoolExecutor(UPLOADS, thread_name_prefix="chammi-upload") as uploads:
            out = [
                run_unit(name, unit, opts, store, path, key, uploads, pending, codec)
                for unit, path, key in batch
            ]
        for fut in pending:
            fut.result()  # an upload that failed after its retries fails the task, naming the object
    finally:
        for raw in prefetched:
            raw.drop_prefetched()
    where = _worker_address()
    return [{**res, "worker": where} for res in out]


def _worker_address() -> str:
    """The address of the dask worker running this task ("" outside a worker)."""
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return ""


#: spill uploads a worker keeps in flight while it processes the next units (an object store's latency is
#: hidden behind the work; measured: 2 -> 4 took a 2-worker WTC sample build from 0.61x to 0.68x the local
#: rate with 20 ms per request)
UPLOADS = 4
#: the logger of remote retries (``chammi_data.store.storage``)
RETRY_LOGGER = "chammi_data.store.storage"


def warm_up(names: list[str], stores: list[ObjectStore] | None = None) -> None:
    """Run on each worker before the first unit: import the pipelines and the encoders, one core per worker.

    A dask worker here is one thread on one core; zarr's codec pipeline would otherwise encode chunks on a
    thread pool as wide as the machine, so one worker would use more than a core while writing shards and
    n workers would fight over the same cores. One thread per worker makes "n workers" mean n cores, locally
    and on an external cluster. Retries of remote reads and writes are not logged on the workers (a local
    cluster's workers print to the user's terminal): an object that stays unreadable stops the build with
    one error naming it and the attempts. ``stores``: the build's input and output stores, whose clients
    are made here (a second or more of CPU per process for the S3 client) rather than in the first unit.
    """
    import logging

    import zarr

    logging.getLogger(RETRY_LOGGER).setLevel(logging.ERROR)
    for store in stores or []:  # an object store's client (imports, credentials, endpoint): once, now
        if not store.is_local and store.client is None:  # obstore's, else fsspec's (s3fs: 0.3 s to import)
            _ = store.fs

    from chammi_data.format.writer import encode_cell

    zarr.config.set({"threading.max_workers": 1})
    for name in names:
        shared_pipeline(name)
    # first use of the zstd / Blosc encoders (contexts, thread-locals) happens here, not in the first unit
    info = next(iter(SOURCES.values()))
    encode_cell(Cell(np.ones((len(info.channels), 8, 8), np.uint8), info.channels, info.key, "x", "warmup"))
