"""CellPHIE -> a release (``chammi-build --source cellphie --input DIR|URL``), from the converted form only.

CellPHIE (a pooled genetic screen of 14-channel single cells) is published as a pickle; this build source
never reads it. Convert it once (``chammi-build cellphie-convert --input PICKLE --output DIR
--trust-pickle``, :mod:`pipelines.sources.benchmarks.cellphie.convert`), then build from ``DIR``: its
``cellphie.json``, ``cells.csv`` and the two ``.npy`` arrays, read by byte ranges (a unit reads only its
rows; ``allow_pickle`` is never on). A folder that holds a pickle but no converted form is an error that
says how to convert it. Default ``prefix``: ``CHAMMI-75_test/CELLPHIE`` (the folder the published
benchmark config names).

One sample = one cell (C, 64, 64) with exact pixels, multiplied by its soma mask (``apply_soma_mask``, the
protocol's; false keeps the raw crop). Its channels are ``channels``: the publication does not name
CellPHIE's 14 stains in the files we know, so the default is 14 distinct CHAMMI-75 types as placeholders
(nucleus, cytoskeleton, microtubules, membrane, mitochondria, er, golgi, rna, protein, cell body,
sub-nuclear, cytosol, centrosomes, assorted), in the pickle's channel order; set the real names when known.
``meta`` = the scorer's table: ``gene``, ``time``, ``train`` (bool), ``umi``, ``media``, ``sample`` (+
``row``); ``label`` is the gene. Skips name the row: a row without a gene or time, a train flag that is not
a boolean.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from chammi_data.format.release_format import parse_bool
from chammi_data.format.schema import Cell, make_cell_id
from pipelines.sources.base import Discovery, Skipped, Unit, UnitResult, UnitSkip
from pipelines.sources.benchmarks.cellphie.convert import CELLS, FORMAT, IMAGES, INFO, MASKS
from pipelines.sources.benchmarks.common import (
    COMMON_DEFAULTS,
    TEST_PREFIX,
    BenchmarkPipeline,
    check_channel_list,
    input_store,
    item_units,
    read_table,
    resolve_root,
)

#: placeholder names of CellPHIE's 14 channels (module docstring), in the pickle's channel order
CHANNELS = ["nucleus", "cytoskeleton", "microtubules", "membrane", "mitochondria", "er", "golgi", "rna",
            "protein", "cell body", "sub-nuclear", "cytosol", "centrosomes", "assorted"]  # fmt: skip
COLUMNS = ("gene", "time", "train", "umi", "media", "sample")


class CellPHIEPipeline(BenchmarkPipeline):
    """The converted CellPHIE cells -> one 14-channel sample per cell."""

    name = "cellphie"
    benchmark = "cellphie"
    unit_kind = cell_kind = "cells"
    DEFAULTS: dict[str, Any] = {
        **COMMON_DEFAULTS,
        "prefix": f"{TEST_PREFIX}/CELLPHIE",  # the folder the published benchmark config names
        "items_per_unit": 512,
        "channels": list(CHANNELS),  # names of the channels in the pickle's order (placeholders)
        "apply_soma_mask": True,  # multiply each crop by its soma mask (the protocol)
    }

    def check_options(self, opts: dict[str, Any]) -> None:
        super().check_options(opts)
        check_channel_list(opts["channels"], "cellphie.channels")
        if not isinstance(opts["apply_soma_mask"], bool):
            raise ValueError(
                f"config cellphie.apply_soma_mask must be true or false, got {opts['apply_soma_mask']!r}"
            )

    def tables(self, opts: Any) -> tuple[str, ...]:
        return (INFO,)

    def discover(self, input_dir: Path | str, opts: dict[str, Any]) -> Discovery:
        try:
            root = resolve_root(input_dir, opts, lambda s: s.exists(INFO))
        except FileNotFoundError:
            _refuse_pickle(input_dir, opts)
            raise
        store = input_store(root, opts)
        info = json.loads(store.read_bytes(INFO))
        if info.get("format") != FORMAT:
            raise ValueError(f"{store.path(INFO)}: format {info.get('format')!r} is not {FORMAT}")
        if int(info["channels"]) != len(opts["channels"]):
            raise ValueError(
                f"{store.path(INFO)}: the cells have {info['channels']} channels but cellphie.channels names "
                f"{len(opts['channels'])}"
            )
        table = read_table(store, CELLS, "CellPHIE cell table", COLUMNS)
        if len(table) != int(info["cells"]):
            raise ValueError(f"{store.path(CELLS)} has {len(table)} rows, {INFO} says {info['cells']} cells")
        items, skipped = [], []
        for i, row in enumerate(table.to_dict(orient="records")):
            try:
                train = parse_bool(row["train"], f"train flag {row['train']!r}")
                if not row["gene"] or not row["time"]:
                    raise ValueError("row without gene or time")
            except ValueError as exc:
                skipped.append(Skipped(self.name, "discover", str(exc), store.path(CELLS), i, kind="cells"))
                continue
            items.append([i, {**{c: row[c] for c in COLUMNS}, "train": train}])
        units = item_units(self.name, "cells", root, "cells", items, opts["items_per_unit"])
        return Discovery(units, skipped, found={"cells": len(table)})

    def process(self, unit: Unit, opts: dict[str, Any]) -> UnitResult:
        store = input_store(unit.payload["root"], opts)
        rows = [r for r, _m in unit.payload["cells"]]
        lo, hi = min(rows), max(rows) + 1
        images = _rows(store, IMAGES, lo, hi)
        masks = _rows(store, MASKS, lo, hi)
        names = tuple(opts["channels"])
        cells = []
        for row, meta in unit.payload["cells"]:
            image = images[row - lo]
            if opts["apply_soma_mask"]:
                image = image * (masks[row - lo] > 0).astype(image.dtype)[None]
            cell_id = make_cell_id(self.name, row, meta["umi"], meta["gene"])
            cells.append(
                Cell(
                    np.ascontiguousarray(image),
                    names,
                    self.name,
                    meta["gene"],
                    cell_id,
                    meta={**meta, "row": row},
                    groups={"dataset": meta["time"]},
                )
            )
        return UnitResult(cells, [])


def _rows(store: Any, rel: str, lo: int, hi: int) -> np.ndarray:
    """Rows ``lo..hi-1`` of a C-order ``.npy`` of the input, read by one byte range (never unpickled)."""
    head = store.read_range(rel, 0, 65536)
    fp = io.BytesIO(head)
    try:
        version = np.lib.format.read_magic(fp)
        shape, fortran, dtype = (
            np.lib.format.read_array_header_1_0(fp)
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0(fp)
        )
    except ValueError as exc:
        raise UnitSkip(f"unreadable array ({exc})", store.path(rel)) from None
    if fortran or dtype.hasobject or not shape or hi > shape[0]:
        raise UnitSkip(f"array {shape} {dtype} is not a C-order table of >= {hi} rows", store.path(rel))
    row = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
    data = store.read_range(rel, fp.tell() + lo * row, (hi - lo) * row)
    if len(data) != (hi - lo) * row:
        raise UnitSkip(f"array is truncated (rows {lo}..{hi - 1})", store.path(rel))
    return np.frombuffer(data, dtype=dtype).reshape(hi - lo, *shape[1:])


def _refuse_pickle(input_dir: Path | str, opts: dict[str, Any]) -> None:
    """A folder with CellPHIE's pickle but no converted form: say how to convert it (never unpickle here)."""
    for base in (
        str(input_dir).rstrip("/"),
        f"{str(input_dir).rstrip('/')}/{str(opts.get('prefix') or '').strip('/')}",
    ):
        store = input_store(base, opts)
        found = (store.glob("*.pkl") or []) + (store.glob("*.pickle") or [])
        if found:
            raise FileNotFoundError(
                f"{store.path(found[0])} is CellPHIE's pickle; builds never unpickle (a pickle can run "
                f"code). Convert it once, if you trust its origin: chammi-build cellphie-convert --input "
                f"{store.path(found[0])} --output DIR --trust-pickle, then --input DIR"
            )
