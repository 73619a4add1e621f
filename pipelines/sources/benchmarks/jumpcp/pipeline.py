"""JUMP-CP (CPJUMP1 compound plates) -> a release (``chammi-build --source jumpcp --input DIR|URL``).

The published test layout (DeepProfiler single-cell exports; the reference loader ``sc_dataset`` is the
authority):

    <root>/<plate>/sc-metadata.csv       one row per cell: Key (plate/well/site), Image_Name (relative to
                                         the root), Metadata_broad_sample (empty for DMSO), ...
    <root>/<Image_Name>                  the cell: a tape (160, 160 * 5) of its five channels side by side

Plates: ``plates`` (default: the seven CPJUMP1 compound plates that have a table; ``[]``: every
``*/sc-metadata.csv``). The tape's channels are ``channels`` (default the Cell Painting five in
DeepProfiler's order as CHAMMI-75 names them: nucleus, er, rna, agp, mitochondria), ``channel_width`` 160
each; ``mask_tile: true`` reads one more tile at the end (a mask) and drops it. Default ``prefix``:
``CHAMMI-75_test/Jump-CP`` (the root the published README names).

One sample = one cell, the tape folded to (5, 160, 160) with exact pixels; the protocol's centre crop to 128
happens at embedding (``chammi_data.evaluation.benchmarks.release_table.PROTOCOL_CROP``). ``meta`` = the
scorer's table: ``plate``, ``well``, ``site``, ``broad_sample`` ("" for DMSO), ``pert_type`` and
``control_type`` (the table's ``Metadata_pert_type`` / ``Metadata_control_type`` when it has them, else
from the JUMP-Target-1 annotations by ``broad_sample``; an empty ``broad_sample`` is DMSO: ``control`` /
``negcon``; a compound the annotations lack is ``trt``), ``file``. ``label`` is the broad sample or
``DMSO``.

Skips, each naming its file and row: a row without Key or Image_Name, a Key that is not plate/well/site or
names another plate, a missing or unreadable image, a tape whose size is not the channels' (or 16-bit
mixed with 8-bit is fine: the release keeps the file's depth).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from chammi_data.evaluation.benchmarks.base import reference_table
from chammi_data.format.schema import make_cell_id
from chammi_data.interop.official_layout import tape_to_chw
from pipelines.sources.base import Discovery, Skipped, Unit, UnitResult, safe_id
from pipelines.sources.benchmarks.common import (
    COMMON_DEFAULTS,
    TEST_PREFIX,
    BenchmarkPipeline,
    ItemSkip,
    check_channel_list,
    chunks,
    input_store,
    read_table,
    resolve_root,
)

#: The seven CPJUMP1 compound plates of the benchmark.
PLATES = ("BR00117010", "BR00117011", "BR00117012", "BR00117013", "BR00117024", "BR00117025", "BR00117026")
TABLE = "sc-metadata.csv"
KEY, IMAGE, SAMPLE = "Key", "Image_Name", "Metadata_broad_sample"
PERT, CONTROL = "Metadata_pert_type", "Metadata_control_type"


class JUMPCPPipeline(BenchmarkPipeline):
    """Per-plate single-cell tables + 5-channel tapes -> one Cell Painting sample per cell."""

    name = "jumpcp"
    benchmark = "jumpcp"
    unit_kind = cell_kind = "cells"
    DEFAULTS: dict[str, Any] = {
        **COMMON_DEFAULTS,
        "prefix": f"{TEST_PREFIX}/Jump-CP",  # the root the published README names
        "items_per_unit": 256,
        "plates": list(PLATES),  # plates to read ([] = every <plate>/sc-metadata.csv)
        "channels": ["nucleus", "er", "rna", "agp", "mitochondria"],  # tile order of the tapes
        "channel_width": 160,  # pixels per tile
        "mask_tile": False,  # true: the tape ends with a mask tile, dropped
    }

    def check_options(self, opts: dict[str, Any]) -> None:
        super().check_options(opts)
        check_channel_list(opts["channels"], "jumpcp.channels")
        if not isinstance(opts["plates"], list) or not all(isinstance(p, str) for p in opts["plates"]):
            raise ValueError(f"config jumpcp.plates must be a list of plate barcodes, got {opts['plates']!r}")
        if (
            isinstance(opts["channel_width"], bool)
            or not isinstance(opts["channel_width"], int)
            or opts["channel_width"] < 1
        ):
            raise ValueError(
                f"config jumpcp.channel_width must be a positive integer, got {opts['channel_width']!r}"
            )
        if not isinstance(opts["mask_tile"], bool):
            raise ValueError(f"config jumpcp.mask_tile must be true or false, got {opts['mask_tile']!r}")

    def discover(self, input_dir: Path | str, opts: dict[str, Any]) -> Discovery:
        root = resolve_root(input_dir, opts, lambda s: bool(_plate_tables(s, opts["plates"])))
        store = input_store(root, opts)
        present = _plate_tables(store, opts["plates"])
        wanted = opts["plates"] or present
        annotations = _annotations()
        units, skipped, n_cells = [], [], 0
        for plate in wanted:
            if plate not in present:
                skipped.append(
                    Skipped(
                        self.name,
                        "discover",
                        f"plate {plate} has no {TABLE}",
                        store.path(f"{plate}/{TABLE}"),
                        kind="plates",
                    )
                )
                continue
            where = store.path(f"{plate}/{TABLE}")
            table = read_table(store, f"{plate}/{TABLE}", "JUMP-CP single-cell table", (KEY, IMAGE, SAMPLE))
            n_cells += len(table)
            items = []
            for i, row in enumerate(table.to_dict(orient="records")):
                cell, reason = _cell_item(row, plate, annotations)
                if reason:
                    skipped.append(Skipped(self.name, "discover", reason, where, i, kind="cells"))
                else:
                    items.append([i, *cell])
            for k, part in enumerate(chunks(items, opts["items_per_unit"])):
                units.append(
                    Unit(
                        self.name,
                        f"{safe_id(plate)}-{k:05d}",
                        {"root": root, "plate": plate, "cells": part},
                        items=len(part),
                    )
                )
        found = {"cells": n_cells, "plates": len(wanted)}
        return Discovery(
            units, skipped, found=found, used={"plates": len(wanted) - sum(p not in present for p in wanted)}
        )

    def process(self, unit: Unit, opts: dict[str, Any]) -> UnitResult:
        plate = unit.payload["plate"]
        names = tuple(opts["channels"])
        tiles = len(names) + (1 if opts["mask_tile"] else 0)
        width = int(opts["channel_width"])

        def to_image(pixels: np.ndarray, where: str) -> np.ndarray:
            tape = np.squeeze(pixels)
            if tape.ndim != 2 or tape.shape[1] != tiles * width:
                raise ItemSkip(
                    f"tape is {tape.shape}, not (H, {tiles} x {width}) for channels {', '.join(names)}", where
                )
            return tape_to_chw(tape, width)[: len(names)]

        def identify(row: int, rel: str, meta: dict[str, Any]) -> tuple[str, str, dict[str, str]]:
            cell_id = make_cell_id(self.name, plate, row, rel)
            return meta["broad_sample"] or "DMSO", cell_id, {"dataset": plate, "Plate": plate}

        return self.file_cells(unit, opts, names, to_image, identify)


def _plate_tables(store: Any, plates: list[str]) -> list[str]:
    """The plates of ``plates`` that have a table (checked one by one: works where nothing can be listed,
    e.g. over HTTP), or with ``plates == []`` every ``*/sc-metadata.csv`` found."""
    if plates:
        return [p for p in plates if store.exists(f"{p}/{TABLE}")]
    return sorted(t.split("/")[0] for t in store.glob(f"*/{TABLE}") or [])


def _annotations() -> dict[str, tuple[str, str]]:
    """{broad_sample: (pert_type, control_type)} of the JUMP-Target-1 annotations (committed)."""
    ann = pd.read_csv(
        reference_table("jumpcp", "JUMP-Target-1_compound_metadata_additional_annotations.tsv"),
        sep="\t",
        dtype=str,
        keep_default_na=False,
    )
    return {
        b: (p, c)
        for b, p, c in zip(ann["broad_sample"], ann["pert_type"], ann["control_type"], strict=True)
        if b
    }


def _cell_item(
    row: dict[str, str], plate: str, annotations: dict[str, tuple[str, str]]
) -> tuple[list[Any], str]:
    """([image path, meta], "") of a table row, or ([], why it is skipped)."""
    key, rel = row[KEY].strip(), row[IMAGE].strip()
    if not key or not rel:
        return [], f"row without {KEY if not key else IMAGE}"
    parts = key.split("/")
    if len(parts) != 3 or not all(parts):
        return [], f"{KEY} {key!r} is not plate/well/site"
    if parts[0] != plate:
        return [], f"{KEY} {key!r} names plate {parts[0]}, but the table is plate {plate}'s"
    sample = row[SAMPLE].strip()
    sample = "" if sample == "DMSO" else sample
    pert, control = annotations.get(sample, ("control", "negcon") if not sample else ("trt", ""))
    pert = row.get(PERT, "").strip() or pert
    control = row.get(CONTROL, "").strip() if row.get(PERT, "").strip() else control
    meta = {
        "plate": plate,
        "well": parts[1],
        "site": parts[2],
        "broad_sample": sample,
        "pert_type": pert,
        "control_type": control,
    }
    return [rel, meta], ""
