"""The one shape every source pipeline has, and the records the engine passes around.

A source module (``pipelines/sources/wtc11/pipeline.py``, ``hpa.py``, ``cp.py``, ``chammi.py``) subclasses
:class:`SourcePipeline` and registers itself in ``pipelines.sources.registry``. The engine
(``pipelines.engine.build``) discovers units, runs ``process`` on each on dask.distributed, spills each unit's
cells atomically (resume), then calls ``assign`` once on the metadata of all cells and hands the sorted cells
to the ``chammi_data`` writers. The engine knows a source only through what its class declares here (defaults
and options, tables, the sources it makes, whether it reads a ready-made release, order, batch size, what its
units and cells are for the accounting): it names no source. What is shared (normalisation, cropping,
segmentation) lives once in ``pipelines.steps.imaging`` and ``pipelines.steps.segmentation``.
"""

from __future__ import annotations

import copy
import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd

from chammi_data.format.schema import Cell

_SAFE_ID = re.compile(r"[A-Za-z0-9_-]+")


def safe_id(text: object, max_len: int = 80) -> str:
    """``text`` as a part of a unit id: letters, digits, ``-`` and ``_`` only (unit ids name spill files).

    A text that already is one and is at most ``max_len`` long is returned as it is. Otherwise its runs of
    other characters become ``_``, it is cut to leave room, and ``-`` plus 8 hex digits of its sha256 are
    appended, so two different texts never share an id.
    """
    value = str(text)
    if _SAFE_ID.fullmatch(value) and len(value) <= max_len:
        return value
    base = re.sub(r"[^A-Za-z0-9_-]+", "_", value).strip("_")[: max(1, max_len - 9)] or "x"
    return f"{base}-{hashlib.sha256(value.encode('utf-8')).hexdigest()[:8]}"


@dataclass(frozen=True)
class Unit:
    """One work unit: a WTC cell, an HPA field, a CP site, a chunk of official rows.

    ``unit_id`` is stable across runs and filesystem-safe (letters, digits, ``-``, ``_``); ``payload`` is
    JSON-serialisable (paths as strings, row numbers, metadata) so units travel to dask workers cheaply.
    ``items``: how many discovered items (of the pipeline's ``unit_kind``) the unit stands for - 1, except for
    a unit that batches several rows of a table.
    """

    source: str
    unit_id: str
    payload: dict[str, Any] = field(default_factory=dict)
    items: int = 1


@dataclass
class Skipped:
    """One item that did not make it into the release, with where and why. Goes to build_report.json."""

    source: str
    unit_id: str
    reason: str
    file: str = ""
    row: int | str | None = None
    count: int = 1  #: how many items this skip stands for
    #: what was skipped (the pipeline's ``unit_kind`` or ``cell_kind``, e.g. fields or cells). Left empty, the
    #: engine fills in the unit kind for a skip from ``discover`` and the cell kind for one from ``process``.
    kind: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "unit": self.unit_id,
            "file": self.file,
            "row": self.row,
            "reason": self.reason,
            "count": self.count,
            "kind": self.kind,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Skipped:
        """The inverse of :meth:`to_dict`."""
        return cls(
            d["source"],
            d["unit"],
            d["reason"],
            d.get("file", ""),
            d.get("row"),
            d.get("count", 1),
            d.get("kind", ""),
        )


class UnitSkip(Exception):
    """Raised by ``process`` when a whole unit cannot be used; the engine records it as :class:`Skipped`."""

    def __init__(self, reason: str, file: str | Path = "", row: int | str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.file = str(file)
        self.row = row


@dataclass
class UnitResult:
    """What ``process`` returns: the unit's cells (label set, split unassigned) and per-item skips.

    ``found``: for a pipeline whose units hold several cells (HPA fields, CP sites), ``{cell_kind: n}`` with
    the number of candidate cells the unit held (segmented cells, nucleus rows): each must end up as a cell or
    a skip, and the build checks that they do.
    """

    cells: list[Cell]
    skipped: list[Skipped] = field(default_factory=list)
    found: dict[str, int] = field(default_factory=dict)


@dataclass
class Discovery:
    """What ``discover`` returns: the work units (sorted by ``unit_id``), the items skipped already, and the
    accounting's starting point.

    ``found``: ``{kind: n}``, how many items of each kind the source's tables list (the "in" of the build's
    accounting; at least the pipeline's ``unit_kind``). ``used``: for a kind that only discovery handles
    (CP plates), how many of them were used; the engine counts the rest itself.
    """

    units: list[Unit]
    skipped: list[Skipped] = field(default_factory=list)
    found: dict[str, int] = field(default_factory=dict)
    used: dict[str, int] = field(default_factory=dict)


class SourcePipeline(ABC):
    """Discover -> process -> assign, plus ``synth`` writing sample raw data in the source's real layout.

    ``options(section)`` turns the pipeline's section of the build config into its options once per build;
    ``discover`` and ``process`` receive those options, ``assign`` the whole build config (task rules).
    """

    #: build name on the command line (``--source NAME``) and name of its build-config section
    name: str = ""
    #: source key of the cells a raw-source pipeline makes (wtc11 | hpa | cp); "" for the official converter
    key: str = ""
    #: source keys of the cells it may make; any other cell is refused by the engine
    makes: tuple[str, ...] = ()
    #: True for a pipeline that converts a ready-made release: it needs ``--input``, builds on its own (with
    #: no other pipeline) and takes splits from its input instead of task rules
    reads_release: bool = False
    #: the options of its build-config section and their defaults; any other key is an error
    DEFAULTS: ClassVar[dict[str, Any]] = {}
    #: accounting: what a unit is (``discover`` counts these) and what a cell of the release is. When they
    #: differ, each unit holds several cells and ``process`` reports how many it found (``UnitResult.found``).
    unit_kind: str = "cells"
    cell_kind: str = "cells"
    #: release order of the cells: ``"cell_id"`` (sorted), or ``"unit"`` (unit order, then the order in a
    #: unit)
    order: str = "cell_id"
    #: units sent to a dask worker per task. Each task costs the scheduler and the client a few ms of CPU, on
    #: the same cores as the workers when they share a machine: batching small units keeps that off the
    #: critical path. Every unit is still spilled on its own, so resume and the output bytes do not depend on
    #: it.
    units_per_task: int = 1

    def options(self, section: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """:attr:`DEFAULTS` with the build config's section of this pipeline merged over them, checked.

        An unknown key raises ``ValueError`` naming the section and the valid keys; values are checked by
        :meth:`check_options`.
        """
        section = dict(section or {})
        unknown = sorted(set(section) - set(self.DEFAULTS))
        if unknown:
            raise ValueError(
                f"config {self.name}: unknown option(s) {unknown}; valid: {sorted(self.DEFAULTS)}"
            )
        opts = {**copy.deepcopy(self.DEFAULTS), **section}
        self.check_options(opts)
        return opts

    def check_options(self, opts: dict[str, Any]) -> None:  # noqa: B027 (an optional hook)
        """Raise ``ValueError`` for an unusable option value; may normalise values in place."""

    def used(self, cells: list[dict[str, Any]], opts: Mapping[str, Any]) -> dict[str, int]:
        """The accounting's ``used`` of the release's cell records (``{kind: n}``); by default every record
        is one item of :attr:`cell_kind`. A pipeline whose rows are of several kinds (CHAMMI-75 storing
        crops: images and their crops) counts each kind."""
        return {self.cell_kind: len(cells)}

    def tables(self, opts: Mapping[str, Any]) -> tuple[str, ...]:
        """File names of the source's top-level tables: a folder holding one of them is the source's own
        folder (not a parent folder with one subfolder per source)."""
        return ()

    def rules_digest(self, config: Mapping[str, Any]) -> str:
        """sha256 of the task rules that ``assign`` applies ("" when the source has no rules file)."""
        from pipelines.steps.tasks import load_rules, rules_digest

        try:
            return rules_digest(load_rules(self.key, config))
        except FileNotFoundError:
            return ""

    @abstractmethod
    def discover(self, input_dir: Any, opts: dict[str, Any]) -> Discovery:
        """Read the source's tables: the work units sorted by ``unit_id``, rows skipped already, counts.

        ``input_dir`` is the build's input for this source: a ``pipelines.steps.rawinput.RawInput`` (a
        folder or any location; read it through its methods, see that module for what a source must do to
        read from anywhere; ``str(input_dir)`` is its URL, so a source that opens its own store from it -
        CHAMMI-75 - reads it as before) - or, from tests and scripts, a path or a URL (``as_raw_input`` turns
        it into one)."""

    @abstractmethod
    def process(self, unit: Unit, opts: dict[str, Any]) -> UnitResult:
        """Turn one unit into cells. Raise :class:`UnitSkip` when the unit is unusable as a whole."""

    def unit_files(self, unit: Unit) -> list[str]:
        """The raw objects ``process`` will read for ``unit`` (paths relative to the payload's ``root``, or
        full URLs). On an object store the engine fetches them ahead, several at once; [] fetches nothing
        ahead."""
        return []

    def assign(self, table: pd.DataFrame, config: dict[str, Any]) -> pd.DataFrame:
        """Split and task membership from the committed task rules (``manifests/tasks/<source>.yaml``, or the
        build config's ``tasks`` override).

        ``table`` has one row per cell: ``cell_id, source, label``, the group columns and the ``meta``
        fields flattened. Returns ``cell_id, train_test_split, Task_one..Task_four`` (booleans); cells in no
        split get ``train_test_split == ""`` and all-False tasks (they are kept and reported, not dropped).
        """
        from pipelines.steps.tasks import assign_tasks, load_rules

        return assign_tasks(table, load_rules(self.key, config))

    def synth(self, out_dir: Path, seed: int = 0) -> None:
        """Write small, realistic raw data in this source's real layout into ``out_dir``."""
        raise NotImplementedError(f"{self.name} has no synthetic sample writer")
