"""The one shape every source pipeline has, and the records the engine passes around.

A source module (``pipelines/wtc11.py``, ``hpa.py``, ``cp.py``, ``chammi.py``) subclasses
:class:`SourcePipeline` and registers itself in ``pipelines.registry``. The engine (``pipelines.engine``)
discovers units, runs ``process`` on each on dask.distributed, spills each unit's cells atomically (resume),
then calls ``assign`` once on the metadata of all cells and hands the sorted cells to the ``chammi_data``
writers. What differs between sources lives in the source module; what is shared (normalisation, cropping,
segmentation, the engine) lives once in ``pipelines.imaging``, ``pipelines.segmentation``, ``pipelines.engine``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from chammi_data.schema import Cell


@dataclass(frozen=True)
class Unit:
    """One work unit: a WTC cell, an HPA field, a CP site, a chunk of official rows.

    ``unit_id`` is stable across runs and filesystem-safe (letters, digits, ``-``, ``_``); ``payload`` is
    JSON-serialisable (paths as strings, row numbers, metadata) so units travel to dask workers cheaply.
    """

    source: str
    unit_id: str
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass
class Skipped:
    """One item that did not make it into the release, with where and why. Goes to build_report.json."""

    source: str
    unit_id: str
    reason: str
    file: str = ""
    row: int | str | None = None
    count: int = 1  # how many cells/items this skip stands for (a field with no cells: 1 field)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "unit": self.unit_id, "file": self.file, "row": self.row,
                "reason": self.reason, "count": self.count}


class UnitSkip(Exception):
    """Raised by ``process`` when a whole unit cannot be used; the engine records it as :class:`Skipped`."""

    def __init__(self, reason: str, file: str | Path = "", row: int | str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.file = str(file)
        self.row = row


@dataclass
class UnitResult:
    """What ``process`` returns: the unit's cells (label set, split unassigned) and per-item skips."""

    cells: list[Cell]
    skipped: list[Skipped] = field(default_factory=list)


class SourcePipeline(ABC):
    """Discover -> process -> assign, plus ``synth`` writing sample raw data in the source's real layout."""

    #: source key of the cells it makes: wtc11 | hpa | cp (the official converter makes all three)
    key: str = ""
    #: build name on the command line (``--source NAME``)
    name: str = ""
    #: release order of the cells: ``"cell_id"`` (sorted), or ``"unit"`` (unit order, then the order in a unit)
    order: str = "cell_id"
    #: units sent to a dask worker per task. Each task costs the scheduler and the client a few ms of CPU, on the
    #: same cores as the workers when they share a machine: batching small units keeps that off the critical
    #: path. Every unit is still spilled on its own, so resume and the output bytes do not depend on it.
    units_per_task: int = 1

    @abstractmethod
    def discover(self, input_dir: Path, config: dict[str, Any]) -> tuple[list[Unit], list[Skipped]]:
        """Read the source's tables, return the work units sorted by ``unit_id`` and rows skipped already."""

    @abstractmethod
    def process(self, unit: Unit, config: dict[str, Any]) -> UnitResult:
        """Turn one unit into cells. Raise :class:`UnitSkip` when the unit is unusable as a whole."""

    @abstractmethod
    def assign(self, table: pd.DataFrame, config: dict[str, Any]) -> pd.DataFrame:
        """Split and task membership from the committed task rules (``manifests/tasks/<source>.yaml``).

        ``table`` has one row per cell: ``cell_id, source, label``, the group columns and the ``meta``
        fields flattened. Returns ``cell_id, train_test_split, Task_one..Task_four`` (booleans); cells in no
        split get ``train_test_split == ""`` and all-False tasks (they are kept and reported, not dropped).
        """

    def synth(self, out_dir: Path, seed: int = 0) -> None:
        """Write small, realistic raw data in this source's real layout into ``out_dir``."""
        raise NotImplementedError(f"{self.name} has no synthetic sample writer")
