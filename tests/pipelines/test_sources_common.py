"""One contract test parametrised over every registered source pipeline (add a source, get the test)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import pipelines.sources.wtc11.synth as wtc11_synth
from chammi_data.format.vocab import RELEASE_SOURCE_KEYS, SOURCES, TASK_COLUMNS, VARIABLE_SOURCES
from pipelines.engine.ledger import cell_table
from pipelines.sources.base import SourcePipeline, UnitSkip
from pipelines.sources.registry import PIPELINES, get_pipeline, list_pipelines
from pipelines.sources.synthetic import write_source_sample
from pipelines.sources.wtc11.pipeline import STAGES

HEAVY = {"hpa", "cp"}  # their sample generators take tens of seconds here
PARAMS = [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in PIPELINES]


def test_registry_resolves_every_name() -> None:
    assert list_pipelines() == [
        "wtc11",
        "hpa",
        "cp",
        "chammi",
        "chammi75",
        *("rbc_mc", "idr0017", "cellphie", "jumpcp", "hpav23"),  # the CHAMMI-75 benchmark adapters
    ]
    for name in list_pipelines():
        pipe = get_pipeline(name)
        assert isinstance(pipe, SourcePipeline) and pipe.name == name
        assert pipe.makes and set(pipe.makes) <= set(RELEASE_SOURCE_KEYS)
        assert pipe.key in pipe.makes or (pipe.reads_release and pipe.key == "")
        assert pipe.order in ("cell_id", "unit", "group") and pipe.units_per_task >= 1
        assert pipe.options() == pipe.options({})  # every option has a default
        with pytest.raises(ValueError, match=f"config {name}: unknown option"):  # one check for every source
            pipe.options({"no_such_option": 1})
    with pytest.raises(KeyError, match="valid: wtc11, hpa, cp, chammi, chammi75, rbc_mc"):
        get_pipeline("allen")


def _raw(name: str, tmp_path: Path) -> Path:
    if name == "wtc11":  # the full sample is ~200 cells; the contract needs a few
        wtc11_synth.write_sample(tmp_path, seed=0, cells_per_structure=1, z=1, stages=STAGES)
    elif name in ("hpa", "cp"):  # the sample as builds get it (generated once per session, then copied)
        return write_source_sample(tmp_path, name, 0)
    else:
        get_pipeline(name).synth(tmp_path, seed=0)
    return tmp_path


@pytest.mark.parametrize("name", PARAMS)
def test_pipeline_contract(name: str, tmp_path: Path) -> None:
    pipe = get_pipeline(name)
    raw = _raw(name, tmp_path / "raw")
    opts = pipe.options()
    found = pipe.discover(raw, opts)
    units, skipped = found.units, found.skipped
    ids = [u.unit_id for u in units]
    assert units and ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", i) for i in ids)
    assert all(json.loads(json.dumps(u.payload)) == u.payload for u in units)  # travels to workers as JSON
    assert all(s.reason and s.source for s in skipped)
    cells = []
    for unit in units[:3]:
        try:
            first = pipe.process(unit, opts)
        except UnitSkip:
            continue
        again = pipe.process(unit, opts)
        assert [c.cell_id for c in first.cells] == [c.cell_id for c in again.cells]  # stable ids
        assert [c.checksum for c in first.cells] == [c.checksum for c in again.cells]  # deterministic pixels
        cells.extend(first.cells)
    assert cells, f"{name}: the first units of the sample produced no cells"
    for cell in cells:
        if cell.source in VARIABLE_SOURCES:  # any channel set of the source's names, any size
            assert set(cell.channels) <= set(VARIABLE_SOURCES[cell.source].channels)
            # CHAMMI-75 has no labels; a benchmark's rows carry their class (or compound, gene...)
            assert (cell.label == "") if cell.source == "chammi75" else bool(cell.label)
            assert cell.image.dtype in (np.uint8, np.uint16)  # benchmark images keep their bit depth
        else:
            info = SOURCES[cell.source]
            assert cell.channels == info.channels and cell.image.shape == (info.num_channels, *info.tile_hw)
            assert cell.label and cell.image.dtype == np.uint8
        assert cell.cell_id.startswith(f"{cell.source}-")
        assert json.dumps(cell.meta)
        assert set(cell.groups) <= {"Structure", "cell_type", "Plate", "dataset"}
    records = [
        {"cell_id": c.cell_id, "source": c.source, "label": c.label, "meta": c.meta, "groups": c.groups}
        for c in cells
    ]
    assigned = pipe.assign(cell_table(records), {})
    assert list(assigned["cell_id"]) == [c.cell_id for c in cells]
    assert {"train_test_split", *TASK_COLUMNS} <= set(assigned.columns)
