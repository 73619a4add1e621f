"""The unit tasks a build runs on its dask workers: process units into spills, and the warm-up.

Every task takes and returns small, plain values (names, paths, records): pixels never travel between the
workers and the client. A pipeline is looked up by name once per worker process. The shard-writing tasks live
with the shard plan in :mod:`pipelines.engine.writing`.
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from chammi_data.format.schema import Cell
from chammi_data.format.vocab import SOURCES, is_variable
from pipelines.engine.spill import write_spill
from pipelines.sources.base import Skipped, Unit, UnitResult, UnitSkip
from pipelines.sources.registry import shared_pipeline


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
    name: str, unit: Unit, opts: dict[str, Any], spill_path: str, key: str, codec: str = "zstd"
) -> dict[str, Any]:
    """Process one unit with the options of pipeline ``name`` and spill it; returns the unit's outcome
    (``UnitOutcome.to_dict()``: records, skips, found, ok - never the pixels), its id and the seconds it took.

    A unit that fails as a whole (``UnitSkip``, an unexpected error, or neither cells nor skips) becomes one
    skip of the pipeline's ``unit_kind`` standing for all the unit's items; a skip from ``process`` without a
    kind is of the pipeline's ``cell_kind``.
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
    except Exception as exc:  # a bug or an input we did not foresee: never crash the build, report it
        tb = traceback.format_exc(limit=3).strip().splitlines()[-1]
        result = whole_unit(f"error: {type(exc).__name__}: {exc} [{tb}]")
    else:
        if not ok:
            result = whole_unit("no cells found in unit", str(unit.payload.get("file", "")))
        for s in result.skipped:
            s.kind = s.kind or pipeline.cell_kind
    result = check_cells(result, unit, pipeline.makes, pipeline.cell_kind)
    outcome = write_spill(Path(spill_path), key, result, ok, codec)
    return {"unit_id": unit.unit_id, **outcome.to_dict(), "seconds": time.perf_counter() - t0}


def run_units(
    name: str, batch: list[tuple[Unit, str, str]], opts: dict[str, Any], codec: str = "zstd"
) -> list[dict[str, Any]]:
    """Worker task: :func:`run_unit` over a batch of (unit, spill path, spill key); members in ``codec``."""
    return [run_unit(name, unit, opts, path, key, codec) for unit, path, key in batch]


def warm_up(names: list[str]) -> None:
    """Run on each worker before the first unit: import the pipelines and the encoders, one core per worker.

    A dask worker here is one thread on one core; zarr's codec pipeline would otherwise encode chunks on a
    thread pool as wide as the machine, so one worker would use more than a core while writing shards and
    n workers would fight over the same cores. One thread per worker makes "n workers" mean n cores, locally
    and on an external cluster.
    """
    import zarr

    from chammi_data.format.writer import encode_cell

    zarr.config.set({"threading.max_workers": 1})
    for name in names:
        shared_pipeline(name)
    # first use of the zstd / Blosc encoders (contexts, thread-locals) happens here, not in the first unit
    info = next(iter(SOURCES.values()))
    encode_cell(Cell(np.ones((len(info.channels), 8, 8), np.uint8), info.channels, info.key, "x", "warmup"))
