"""The build ledger: per-cell records (never pixels), skips, task assignment, shard plan and the report.

The engine's client side works only on records - small dicts pointing at a unit spill (``spill``,
``index``) - so it never holds the pixels of a source. This module turns the units' results into the
ordered cell list, plans the shards, and writes ``build_report.json`` plus the printed summary table.
Accounting: for every source, ``in = written + skipped`` where each skip carries a ``count``.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from chammi_data.release_format import GROUP_COLUMNS
from chammi_data.vocab import SOURCE_KEYS, TASK_COLUMNS
from pipelines.base import Skipped, Unit


def _skip(d: Mapping[str, Any]) -> Skipped:
    return Skipped(d["source"], d["unit"], d["reason"], d.get("file", ""), d.get("row"), d.get("count", 1))


def dedupe(name: str, units: list[Unit], results: Mapping[str, Mapping[str, Any]],
           spill_dir: str) -> tuple[list[dict[str, Any]], list[Skipped]]:
    """Cell records of all units in unit order; later duplicates of a cell_id become skips.

    A unit that produced neither a cell nor a skip is reported too, so nothing disappears silently.
    """
    seen: dict[str, str] = {}
    cells: list[dict[str, Any]] = []
    skipped: list[Skipped] = []
    for pos, unit in enumerate(units):
        res = results[unit.unit_id]
        unit_skips = [_skip(d) for d in res["skipped"]]
        skipped.extend(unit_skips)
        if not res["records"] and not unit_skips:
            skipped.append(Skipped(unit.source, unit.unit_id, "no cells found in unit", str(unit.payload.get("file", ""))))
        for idx, rec in enumerate(res["records"]):
            cid = rec["cell_id"]
            if cid in seen:
                skipped.append(Skipped(rec["source"], unit.unit_id, f"duplicate cell_id {cid} (first from unit {seen[cid]})",
                                       str(rec["meta"].get("file", rec["meta"].get("crop_raw", ""))), rec["meta"].get("row")))
                continue
            seen[cid] = unit.unit_id
            cells.append({**rec, "build": name, "unit_id": unit.unit_id, "unit_pos": pos, "index": idx,
                          "spill": os.path.join(spill_dir, f"{unit.unit_id}.spill")})
    return cells, skipped


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


def assemble(name: str, cells: list[dict[str, Any]], assigned: pd.DataFrame) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Attach split and tasks from ``assign`` output; returns (cells, unassigned cells' summaries)."""
    need = {"cell_id", "train_test_split", *TASK_COLUMNS}
    missing_cols = need - set(assigned.columns)
    if missing_cols:
        raise ValueError(f"pipeline {name}: assign() returned no column(s) {sorted(missing_cols)}")
    by_id = assigned.set_index("cell_id")
    absent = [c["cell_id"] for c in cells if c["cell_id"] not in by_id.index]
    if absent:
        raise ValueError(f"pipeline {name}: assign() returned no row for {len(absent)} cell(s), e.g. {absent[:3]}")
    unassigned = []
    for c in cells:
        row = by_id.loc[c["cell_id"]]
        c["split"] = str(row["train_test_split"] or "")
        c["tasks"] = [t for t in TASK_COLUMNS if bool(row[t])]
        if not c["split"]:
            unassigned.append({"source": c["source"], "cell_id": c["cell_id"], "label": c["label"],
                               "unit": c["unit_id"], "groups": c["groups"]})
    return cells, unassigned


def order_cells(cells: list[dict[str, Any]], order: str) -> list[dict[str, Any]]:
    """``cell_id`` (default): sorted by id; ``unit``: unit order then the order inside the unit."""
    if order == "cell_id":
        return sorted(cells, key=lambda c: c["cell_id"])
    if order == "unit":
        return sorted(cells, key=lambda c: (c["unit_pos"], c["index"]))
    raise ValueError(f"unknown cell order {order!r}; valid: cell_id, unit")


#: the fields of a cell's spill record (``writer.EncodedCell.record``, where its bytes lie) that a shard writer needs
SPILL_RECORD = ("cell_id", "source", "label", "channels", "dtype", "shape", "meta", "groups", "sha256", "tar", "zarr")


def plan_shards(cells: list[dict[str, Any]], per: int) -> dict[str, list[dict[str, Any]]]:
    """{source: [{index, zarr_start, entries: [(spill, index, split, tasks, record)]}]}, sources in canonical order.

    ``record`` is the cell's spill record (ids, label, channels, dtype, shape, sha256, meta, groups and where its
    encoded bytes lie in the spill), so a shard writer reads only those bytes."""
    plans: dict[str, list[dict[str, Any]]] = {}
    for src in SOURCE_KEYS:
        mine = [c for c in cells if c["source"] == src]
        plans_src = []
        for k in range(0, len(mine), per):
            entries = [(c["spill"], c["index"], c.get("split", ""), c.get("tasks", []), {f: c[f] for f in SPILL_RECORD if f in c})
                       for c in mine[k:k + per]]
            plans_src.append({"index": k // per, "zarr_start": k, "entries": entries})
        if plans_src:
            plans[src] = plans_src
    return plans


def _reason_kind(reason: str) -> str:
    """Group reasons for the summary: the leading words ("missing file", "duplicate CellId", ...)."""
    m = re.match(r"[A-Za-z][A-Za-z _-]*", reason.strip())
    words = m.group(0).split() if m else []
    return " ".join(words[:3]) if words else "other"


@dataclass
class BuildResult:
    """What :func:`pipelines.engine.build` did: ordered cell records, skips, unassigned cells, timings."""

    output: Path
    sources: list[str]
    config_hash: str
    cells: list[dict[str, Any]]
    skipped: list[Skipped]
    unassigned: list[dict[str, Any]]
    per_source: dict[str, dict[str, Any]] = field(repr=False, default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    release_json: Path | None = None
    report_path: Path | None = None
    failed: str = ""

    @property
    def ok(self) -> bool:
        return not self.failed

    def skip_counts(self) -> dict[str, int]:
        """{reason kind: number of items}, sorted by kind."""
        counts: Counter[str] = Counter()
        for s in self.skipped:
            counts[_reason_kind(s.reason)] += int(s.count)
        return dict(sorted(counts.items()))

    def accounting(self) -> dict[str, dict[str, int]]:
        """Per build name: units, units reused from spills, written, skipped, in (= written + skipped)."""
        out = {}
        for name in self.sources:
            info = self.per_source.get(name, {})
            written = sum(1 for c in self.cells if c["build"] == name)
            skipped = sum(int(s.count) for s in info.get("skipped", []))
            out[name] = {"units": len(info.get("units", [])), "units_reused": int(info.get("reused", 0)), "written": written,
                         "skipped": skipped, "in": written + skipped}
        return out

    def report(self) -> dict[str, Any]:
        """The build_report.json content (input paths made relative to their source folder)."""
        skipped = []
        for s in sorted(self.skipped, key=lambda s: (s.source, s.unit_id, str(s.row), s.reason)):
            d = s.to_dict()
            for info in self.per_source.values():
                root = str(info.get("dir", ""))
                if root and d["file"].startswith(root + os.sep):
                    d["file"] = os.path.relpath(d["file"], root)
            skipped.append(d)
        written: dict[str, Any] = {}
        for src in SOURCE_KEYS:
            mine = [c for c in self.cells if c["source"] == src]
            if mine:
                written[src] = {
                    "cells": len(mine),
                    "splits": dict(sorted(Counter(c.get("split") or "(unassigned)" for c in mine).items())),
                    "tasks": {t: sum(t in c.get("tasks", []) for c in mine) for t in TASK_COLUMNS
                              if any(t in c.get("tasks", []) for c in mine)},
                    "labels": dict(sorted(Counter(c["label"] for c in mine).items())),
                }
        return {
            "status": "failed" if self.failed else "ok",
            "failure": self.failed,
            "sources": self.sources,
            "inputs": {n: str(i.get("dir", "")) for n, i in self.per_source.items()},
            "config_hash": self.config_hash,
            "accounting": self.accounting(),
            "written": written,
            "skipped_by_reason": self.skip_counts(),
            "skipped": skipped,
            "unassigned": self.unassigned,
            "timings_s": {k: round(v, 3) for k, v in sorted(self.timings.items())},
            "release_json": str(self.release_json) if self.release_json else "",
        }

    def write_report(self, t_start: float) -> BuildResult:
        """Write OUTPUT/build_report.json atomically (with the total wall time) and return self."""
        self.timings["total_s"] = time.perf_counter() - t_start
        self.output.mkdir(parents=True, exist_ok=True)
        path = self.output / "build_report.json"
        tmp = path.with_name(f".build_report.json.{uuid.uuid4().hex}.tmp")
        tmp.write_text(json.dumps(self.report(), indent=1, sort_keys=True, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        self.report_path = path
        return self

    def summary(self) -> str:
        """A plain-text table: cells per split / task / label per source, then skipped counts by reason."""
        rep = self.report()
        lines = [f"CHAMMI build {'FAILED: ' + self.failed if self.failed else 'ok'} -> {self.output}"]
        for name, acc in rep["accounting"].items():
            lines.append(f"  {name}: in {acc['in']} = written {acc['written']} + skipped {acc['skipped']}"
                         f"  ({acc['units']} units, {acc['units_reused']} reused from an earlier run)")
        for src, w in rep["written"].items():
            lines.append(f"\n  [{src}] {w['cells']} cells")
            for title, counts in (("split", w["splits"]), ("task", w["tasks"]), ("label", w["labels"])):
                width = max((len(k) for k in counts), default=0)
                lines.append(f"    {title}:")
                lines += [f"      {k:<{width}}  {v:>7}" for k, v in counts.items()]
        if rep["skipped_by_reason"]:
            lines.append("\n  skipped by reason:")
            width = max(len(k) for k in rep["skipped_by_reason"])
            lines += [f"    {k:<{width}}  {v:>7}" for k, v in rep["skipped_by_reason"].items()]
        if self.unassigned:
            lines.append(f"\n  {len(self.unassigned)} cell(s) matched no task rule (split \"\"): kept, listed in the report")
        if self.report_path:
            lines.append(f"\n  report: {self.report_path}")
        return "\n".join(lines)
