"""The build ledger of one source pipeline: its units, what came back from each, its cells, skips and counts.

The engine's client side works only on records - small dicts pointing at a unit spill (``spill``, ``index``)
- so it never holds the pixels of a source. When every unit of a pipeline is back, :meth:`SourceLedger.finish`
turns the units' records into the release's cell list: duplicates dropped (and listed), split and tasks
attached from the pipeline's ``assign``, cells in release order.

Accounting, per kind of item (``SourcePipeline.unit_kind`` / ``cell_kind``, e.g. HPA fields then cells):
``in`` comes from where the items are found - the source's tables (``Discovery.found``) and, for cells inside
a unit, the unit itself (``UnitResult.found``) - never from the outcome; ``used`` is the units processed and
the cells written; ``skipped`` sums the skips' counts. ``in == used + skipped`` must hold for every kind:
an item dropped without a skip entry fails the build (:meth:`SourceLedger.mismatches`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from chammi_data.format.groups import group_key
from chammi_data.format.release_format import GROUP_COLUMNS
from chammi_data.format.vocab import TASK_COLUMNS
from pipelines.engine.spill import UnitOutcome
from pipelines.sources.base import Discovery, Skipped, SourcePipeline, Unit


@dataclass
class SourceLedger:
    """One pipeline's part of a build (``name`` is its build name, ``input_dir`` the location it read,
    ``spill_dir`` the prefix of its unit spills in the output's store)."""

    name: str
    pipeline: SourcePipeline
    options: dict[str, Any]
    input_dir: Any  #: the source's RawInput (or a list of them: a source read from several locations)
    spill_dir: str
    discovery: Discovery
    units: list[Unit] = field(init=False)  #: the discovery's units, sorted by unit_id
    outcomes: dict[str, UnitOutcome] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)  #: unit id -> spill key
    where: dict[str, str] = field(default_factory=dict)  #: unit id -> the dask worker that made its spill
    reused: int = 0  #: units whose spill from an earlier run was complete and current
    busy_s: float = 0.0  #: worker seconds spent on this pipeline's units
    tasks_left: int = 0  #: unit tasks submitted and not back yet
    cells: list[dict[str, Any]] = field(default_factory=list)  #: after :meth:`finish`: in release order
    skipped: list[Skipped] = field(default_factory=list)  #: after :meth:`finish`: every skip of the pipeline
    unassigned: list[dict[str, Any]] = field(default_factory=list)  #: after :meth:`finish`: cells in no split

    def __post_init__(self) -> None:
        self.units = sorted(self.discovery.units, key=lambda u: u.unit_id)
        for s in self.discovery.skipped:
            s.kind = s.kind or self.pipeline.unit_kind

    def spill_path(self, unit: Unit) -> str:
        """Where the unit's spill is in the output's store (a relative path)."""
        return f"{self.spill_dir}/{unit.unit_id}.spill"

    def record(self, unit_id: str, outcome: UnitOutcome) -> None:
        """Note what a unit gave (from a worker, or from a spill of an earlier run)."""
        self.outcomes[unit_id] = outcome

    def finish(self, config: dict[str, Any]) -> None:
        """Deduplicate, assign splits and tasks, order the cells; collect every skip (discovery first)."""
        cells, skipped = self._dedupe()
        self.skipped = list(self.discovery.skipped) + skipped
        if cells:
            assigned = self.pipeline.assign(cell_table(cells), config)
            cells, self.unassigned = assemble(self.name, cells, assigned)
            cells = order_cells(cells, self.pipeline.order)
        self.cells = cells

    def _dedupe(self) -> tuple[list[dict[str, Any]], list[Skipped]]:
        """Cell records of all units in unit order; later duplicates of a cell_id become skips."""
        seen: dict[str, str] = {}
        cells: list[dict[str, Any]] = []
        skipped: list[Skipped] = []
        for pos, unit in enumerate(self.units):
            out = self.outcomes[unit.unit_id]
            skipped.extend(out.skipped)
            for idx, rec in enumerate(out.records):
                cid = rec["cell_id"]
                if cid in seen:
                    skipped.append(
                        Skipped(
                            rec["source"],
                            unit.unit_id,
                            f"duplicate cell_id {cid} (first from unit {seen[cid]})",
                            str(rec["meta"].get("file", rec["meta"].get("crop_raw", ""))),
                            rec["meta"].get("row"),
                            kind=self.pipeline.cell_kind,
                        )
                    )
                    continue
                seen[cid] = unit.unit_id
                cells.append(
                    {
                        **rec,
                        "build": self.name,
                        "unit_id": unit.unit_id,
                        "unit_pos": pos,
                        "index": idx,
                        "spill": self.spill_path(unit),
                        "spill_key": self.keys.get(unit.unit_id, ""),
                        "worker": self.where.get(unit.unit_id, ""),
                    }
                )
        return cells, skipped

    def tally(self) -> dict[str, dict[str, int]]:
        """{kind: {"in", "used", "skipped"}} (see the module docstring), after :meth:`finish`."""
        kinds: dict[str, dict[str, int]] = {}

        def add(kind: str, what: str, n: int) -> None:
            kinds.setdefault(kind, {"in": 0, "used": 0, "skipped": 0})[what] += int(n)

        unit_kind, cell_kind = self.pipeline.unit_kind, self.pipeline.cell_kind
        for kind, n in self.discovery.found.items():
            add(kind, "in", n)
        for kind, n in self.discovery.used.items():
            add(kind, "used", n)
        for unit in self.units:
            out = self.outcomes[unit.unit_id]
            if out.ok and unit_kind != cell_kind:
                add(unit_kind, "used", unit.items)
            for kind, n in out.found.items():
                add(kind, "in", n)
        for kind, n in self.pipeline.used(self.cells, self.options).items():
            add(kind, "used", n)
        for s in self.skipped:
            add(s.kind, "skipped", s.count)
        return kinds

    def mismatches(self) -> list[str]:
        """One line per kind whose items do not add up: "fields: in 7 != used 3 + skipped 3"."""
        return [
            f"{kind}: in {t['in']} != used {t['used']} + skipped {t['skipped']}"
            for kind, t in self.tally().items()
            if t["in"] != t["used"] + t["skipped"]
        ]

    def accounting(self) -> dict[str, Any]:
        """units, units reused from spills, cells written, items skipped, and the per-kind :meth:`tally`."""
        return {
            "units": len(self.units),
            "units_reused": self.reused,
            "written": len(self.cells),
            "skipped": sum(int(s.count) for s in self.skipped),
            "kinds": self.tally(),
        }


def cell_table(cells: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per cell for ``assign``: cell_id, source, label, the group columns and flat meta fields."""
    rows = []
    for c in cells:
        row: dict[str, Any] = {"cell_id": c["cell_id"], "source": c["source"], "label": c["label"]}
        row.update({g: str(c["groups"].get(g, "")) for g in GROUP_COLUMNS})
        for k, v in c["meta"].items():
            if k not in row:  # meta never shadows the identity or group columns
                row[k] = json.dumps(v, sort_keys=True) if isinstance(v, list | dict) else v
        rows.append(row)
    return pd.DataFrame(rows)


def assemble(
    name: str, cells: list[dict[str, Any]], assigned: pd.DataFrame
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Attach split and tasks from ``assign`` output; returns (cells, unassigned cells' summaries)."""
    need = {"cell_id", "train_test_split", *TASK_COLUMNS}
    missing_cols = need - set(assigned.columns)
    if missing_cols:
        raise ValueError(f"pipeline {name}: assign() returned no column(s) {sorted(missing_cols)}")
    by_id = assigned.set_index("cell_id")
    absent = [c["cell_id"] for c in cells if c["cell_id"] not in by_id.index]
    if absent:
        raise ValueError(
            f"pipeline {name}: assign() returned no row for {len(absent)} cell(s), e.g. {absent[:3]}"
        )
    unassigned = []
    for c in cells:
        row = by_id.loc[c["cell_id"]]
        c["split"] = str(row["train_test_split"] or "")
        c["tasks"] = [t for t in TASK_COLUMNS if bool(row[t])]
        if not c["split"]:
            unassigned.append(
                {
                    "source": c["source"],
                    "cell_id": c["cell_id"],
                    "label": c["label"],
                    "unit": c["unit_id"],
                    "groups": c["groups"],
                }
            )
    return cells, unassigned


def order_cells(cells: list[dict[str, Any]], order: str) -> list[dict[str, Any]]:
    """``cell_id`` (default): sorted by id; ``unit``: unit order then the order inside the unit; ``group``:
    by image group (``chammi_data.format.groups.group_key``: dataset, channels, size, dtype), then id - the
    order a variable source is stored in, one group after the other."""
    if order == "cell_id":
        return sorted(cells, key=lambda c: c["cell_id"])
    if order == "unit":
        return sorted(cells, key=lambda c: (c["unit_pos"], c["index"]))
    if order == "group":
        return sorted(cells, key=lambda c: (group_key(c), c["cell_id"]))
    raise ValueError(f"unknown cell order {order!r}; valid: cell_id, unit, group")
