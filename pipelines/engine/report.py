"""What a build did: :class:`BuildResult`, its ``build_report.json`` and the printed summary table.

The result holds the ledger of every pipeline (:mod:`pipelines.engine.ledger`): cells written, skips with
file, row and reason, unassigned cells, units reused from an earlier run, the accounting per kind of item,
timings. A successful build's report is ``OUTPUT/build_report.json``; a failed build's is
``OUTPUT/build_report.failed.json`` (the previous release's report stays in place).
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chammi_data.format.vocab import RELEASE_SOURCE_KEYS, TASK_COLUMNS
from pipelines.engine.ledger import SourceLedger
from pipelines.engine.output import FAILED_REPORT, REPORT
from pipelines.sources.base import Skipped


def _locations(where: Any) -> list[str]:
    """The input location(s) of a ledger as text."""
    return [str(w) for w in where] if isinstance(where, list | tuple) else [str(where)]


def _reason_kind(reason: str) -> str:
    """Group reasons for the summary: the leading words ("missing file", "duplicate CellId", ...)."""
    m = re.match(r"[A-Za-z][A-Za-z _-]*", reason.strip())
    words = m.group(0).split() if m else []
    return " ".join(words[:3]) if words else "other"


@dataclass
class BuildResult:
    """What :func:`pipelines.engine.build` did: the ledger of each pipeline (by build name), timings,
    outcome."""

    output: Path | str
    sources: list[str]
    config_hash: str
    ledgers: dict[str, SourceLedger] = field(repr=False, default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    release_json: Path | str | None = None
    report_path: Path | str | None = None
    failed: str = ""
    #: writes a report file into the output (``FolderOutput.write_report`` / ``StoreOutput.write_report``)
    writer: Any = field(default=None, repr=False)
    sink: Any = field(default=None, repr=False)  #: where the release was assembled (for publishing)

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def cells(self) -> list[dict[str, Any]]:
        """Cell records of the release, in release order."""
        return [c for ledger in self.ledgers.values() for c in ledger.cells]

    @property
    def skipped(self) -> list[Skipped]:
        return [s for ledger in self.ledgers.values() for s in ledger.skipped]

    @property
    def unassigned(self) -> list[dict[str, Any]]:
        """Cells that matched no task rule (split ""): kept in the release, listed in the report."""
        return [u for ledger in self.ledgers.values() for u in ledger.unassigned]

    def skip_counts(self) -> dict[str, int]:
        """{reason kind: number of items}, sorted by kind."""
        counts: Counter[str] = Counter()
        for s in self.skipped:
            counts[_reason_kind(s.reason)] += int(s.count)
        return dict(sorted(counts.items()))

    def accounting(self) -> dict[str, dict[str, Any]]:
        """Per build name: units, units reused from spills, cells written, items skipped, and per kind of item
        ``{"in", "used", "skipped"}`` (``kinds``)."""
        return {name: ledger.accounting() for name, ledger in self.ledgers.items()}

    def report(self) -> dict[str, Any]:
        """The build_report.json content (input paths made relative to their source folder)."""
        skipped = []
        for s in sorted(self.skipped, key=lambda s: (s.source, s.unit_id, str(s.row), s.reason)):
            d = s.to_dict()
            for ledger in self.ledgers.values():
                for where in _locations(ledger.input_dir):
                    root = where.rstrip("/")
                    for sep in {os.sep, "/"}:
                        if root and d["file"].startswith(root + sep):
                            d["file"] = d["file"][len(root) + 1 :]
            skipped.append(d)
        cells = self.cells
        written: dict[str, Any] = {}
        for src in RELEASE_SOURCE_KEYS:
            mine = [c for c in cells if c["source"] == src]
            if mine:
                written[src] = {
                    "cells": len(mine),
                    "splits": dict(sorted(Counter(c.get("split") or "(unassigned)" for c in mine).items())),
                    "tasks": {
                        t: sum(t in c.get("tasks", []) for c in mine)
                        for t in TASK_COLUMNS
                        if any(t in c.get("tasks", []) for c in mine)
                    },
                    "labels": dict(sorted(Counter(c["label"] for c in mine).items())),
                }
        return {
            "status": "failed" if self.failed else "ok",
            "failure": self.failed,
            "sources": self.sources,
            "inputs": {
                n: (locs[0] if len(locs := _locations(ledger.input_dir)) == 1 else locs)
                for n, ledger in self.ledgers.items()
            },
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
        """Write the report atomically (with the total wall time): ``OUTPUT/build_report.json`` after a
        success, ``OUTPUT/build_report.failed.json`` after a failure; return self."""
        self.timings["total_s"] = time.perf_counter() - t_start
        name = FAILED_REPORT if self.failed else REPORT
        data = (json.dumps(self.report(), indent=1, sort_keys=True, default=str) + "\n").encode("utf-8")
        if self.writer is not None:
            self.report_path = self.writer(name, data)
            return self
        out = Path(self.output)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / f".{name}.{uuid.uuid4().hex}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, out / name)
        self.report_path = out / name
        return self

    def summary(self) -> str:
        """A plain-text table: cells per split / task / label per source, then skipped counts by reason."""
        rep = self.report()
        lines = [f"CHAMMI build {'FAILED: ' + self.failed if self.failed else 'ok'} -> {self.output}"]
        for name, acc in rep["accounting"].items():
            kinds = "; ".join(
                f"{kind} in {t['in']} = used {t['used']} + skipped {t['skipped']}"
                for kind, t in acc["kinds"].items()
            )
            lines.append(
                f"  {name}: {kinds}  ({acc['units']} units, {acc['units_reused']} reused from an earlier run)"
            )
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
            lines.append(
                f'\n  {len(self.unassigned)} cell(s) matched no task rule (split ""): kept, listed in the '
                "report"
            )
        if self.report_path:
            lines.append(f"\n  report: {self.report_path}")
        return "\n".join(lines)
