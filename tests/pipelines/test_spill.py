"""The unit spill file: round trip of a unit's outcome, stale keys and torn files mean "recompute"."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from chammi_data.format.schema import Cell
from chammi_data.store.objects import ObjectStore
from pipelines.engine.spill import SpillReader, read_spill_outcome, write_spill
from pipelines.sources.base import Skipped, UnitResult


def test_spill_roundtrip_and_stale_key(tmp_path: Path) -> None:
    cell = Cell(
        np.zeros((3, 238, 374), np.uint8),
        ("nucleus", "membrane", "protein"),
        "wtc11",
        "M0",
        "wtc11-x",
        meta={"row": 1},
    )
    store, path = ObjectStore(tmp_path), tmp_path / "u.spill"
    written = write_spill(
        store,
        "u.spill",
        "k1",
        UnitResult([cell], [Skipped("wtc11", "u", "why", "f", 2, kind="cells")], found={"cells": 2}),
    )
    back = read_spill_outcome(store, "u.spill", "k1")
    assert back == written and back.ok and back.found == {"cells": 2}
    assert (
        back.records[0]["cell_id"] == "wtc11-x"
        and back.skipped[0].reason == "why"
        and back.skipped[0].row == 2
    )
    with SpillReader(store) as spills:  # a cell's bytes are exactly where its record says
        assert len(spills.read("u.spill", back.records[0]["tar"])) == back.records[0]["tar"][1]
    assert read_spill_outcome(store, "u.spill", "k2") is None  # other options -> recompute
    path.write_bytes(path.read_bytes()[:100])  # torn file -> recompute, not crash
    assert read_spill_outcome(store, "u.spill", "k1") is None
    assert not list(tmp_path.glob(".*tmp"))
