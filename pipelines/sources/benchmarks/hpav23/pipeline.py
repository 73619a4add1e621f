"""HPAv23 ("mini-HPA") -> a release (``chammi-build --source hpav23 --input DIR|URL``).

The published test layout (HPA single-cell crops resized to 256 x 256; the reference loader is the authority):

    <root>/metadata.csv                                           one row per cell: if_plate_id, position,
                                                                  sample, cell_id, antibody, locations, ...
    <root>/<plate>/<plate>_<position>_<sample>_<cell_id>_cell_image.png   an RGBA PNG, one stain per sample

The reference reads the PNG with OpenCV (BGRA): microtubules = blue, ER = green, DNA = red, protein =
alpha. The release stores the channels in that reference order, ``channels`` (microtubules, er, nucleus,
protein), taking PNG sample ``sample_order[k]`` (R=0, G=1, B=2, A=3; default [2, 1, 0, 3]) for channel k.
``locations`` is comma-separated in the table (empty = Negative); ``meta["locations"]`` holds the names
joined by ``|``, as the scorer reads them. Default ``prefix``: ``CHAMMI-75_test/mini-hpa`` (not confirmed:
the published config names a local ``mini-hpa`` folder).

One sample = one cell with exact pixels; ``meta`` = the scorer's table: ``antibody``, ``locations``,
``plate``, ``position``, ``sample``, ``cell_id``, plus ``file``; ``label`` is the locations text (or
``Negative``). Skips, each naming its file and row: a row without plate, position, sample, cell id or
antibody, a missing or unreadable PNG, a PNG that is not 4 samples of 8 or 16 bits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from chammi_data.format.schema import make_cell_id
from pipelines.sources.base import Discovery, Skipped, Unit, UnitResult
from pipelines.sources.benchmarks.common import (
    COMMON_DEFAULTS,
    TEST_PREFIX,
    BenchmarkPipeline,
    ItemSkip,
    check_channel_list,
    input_store,
    item_units,
    read_table,
    resolve_root,
)

TABLE = "metadata.csv"
ID_COLUMNS = ("if_plate_id", "position", "sample", "cell_id")
REQUIRED = (*ID_COLUMNS, "antibody", "locations")


class HPAv23Pipeline(BenchmarkPipeline):
    """metadata.csv + one RGBA PNG per cell -> one 4-channel sample per cell."""

    name = "hpav23"
    benchmark = "hpav23"
    unit_kind = cell_kind = "cells"
    DEFAULTS: dict[str, Any] = {
        **COMMON_DEFAULTS,
        "prefix": f"{TEST_PREFIX}/mini-hpa",  # not confirmed: the published config names a local mini-hpa
        "items_per_unit": 128,
        "metadata": TABLE,  # the cell table, relative to the root
        "channels": ["microtubules", "er", "nucleus", "protein"],  # stored channel order (the reference's)
        "sample_order": [2, 1, 0, 3],  # PNG sample (R=0 G=1 B=2 A=3) of each channel: OpenCV's BGRA
    }

    def check_options(self, opts: dict[str, Any]) -> None:
        super().check_options(opts)
        names = check_channel_list(opts["channels"], "hpav23.channels")
        order = opts["sample_order"]
        if not isinstance(order, list) or sorted(order) != list(range(len(names))):
            raise ValueError(
                f"config hpav23.sample_order must be a permutation of 0..{len(names) - 1}, got {order!r}"
            )

    def tables(self, opts: Any) -> tuple[str, ...]:
        return (opts["metadata"],)

    def discover(self, input_dir: Path | str, opts: dict[str, Any]) -> Discovery:
        root = resolve_root(input_dir, opts, lambda s: s.exists(opts["metadata"]))
        store = input_store(root, opts)
        table = read_table(store, opts["metadata"], "HPAv23 cell table", REQUIRED)
        where = store.path(opts["metadata"])
        items, skipped = [], []
        for i, row in enumerate(table.to_dict(orient="records")):
            ids = [str(row[c]).strip() for c in ID_COLUMNS]
            if not all(ids) or not str(row["antibody"]).strip():
                empty = [c for c in (*ID_COLUMNS, "antibody") if not str(row[c]).strip()]
                skipped.append(
                    Skipped(self.name, "discover", f"row without {', '.join(empty)}", where, i, kind="cells")
                )
                continue
            plate, position, sample, cell = ids
            cell = _integer_text(cell)
            rel = f"{plate}/{plate}_{position}_{sample}_{cell}_cell_image.png"
            names = [n.strip() for n in str(row["locations"]).split(",") if n.strip()]
            meta = {
                "antibody": str(row["antibody"]).strip(),
                "locations": "|".join(names),
                "plate": plate,
                "position": position,
                "sample": sample,
                "cell_id": cell,
            }
            items.append([i, rel, meta])
        units = item_units(self.name, "cells", root, "cells", items, opts["items_per_unit"])
        return Discovery(units, skipped, found={"cells": len(table)})

    def process(self, unit: Unit, opts: dict[str, Any]) -> UnitResult:
        names, order = tuple(opts["channels"]), list(opts["sample_order"])

        def to_image(pixels: np.ndarray, where: str) -> np.ndarray:
            if pixels.ndim != 3 or pixels.shape[2] != len(names):
                raise ItemSkip(f"image is {pixels.shape}, not (H, W, {len(names)}) samples", where)
            return np.ascontiguousarray(pixels.transpose(2, 0, 1)[order])

        def identify(row: int, rel: str, meta: dict[str, Any]) -> tuple[str, str, dict[str, str]]:
            cell_id = make_cell_id(
                self.name, meta["plate"], meta["position"], meta["sample"], meta["cell_id"]
            )
            return meta["locations"] or "Negative", cell_id, {"Plate": meta["plate"]}

        return self.file_cells(unit, opts, names, to_image, identify)


def _integer_text(value: str) -> str:
    """A cell id as the file names spell it: ``12.0`` (a float column) -> ``12``; other text unchanged."""
    try:
        number = float(value)
    except ValueError:
        return value
    return str(int(number)) if number.is_integer() else value
