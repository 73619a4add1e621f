"""The engine: a whole build on an in-process dask cluster; ordering, accounting, determinism, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from chammi_data.format.manifest import read_manifest
from chammi_data.format.release_format import MANIFEST_COLUMNS
from pipelines.engine.build import build
from pipelines.engine.build_config import config_hash, deep_merge, load_config
from pipelines.engine.ledger import order_cells
from pipelines.engine.writing import plan_shards
from pipelines.sources.registry import resolve_sources
from tests.pipelines.helpers import quiet_build

SMALL = {"cells_per_shard": 8}


def _build(raw: Path, out: Path, workers: int = 2, **kw):
    return build(
        "wtc11",
        input_dir=raw,
        output=out,
        workers=workers,
        config={**SMALL, **kw.pop("config", {})},
        progress=False,
        processes=False,
        **kw,
    )


def test_build_writes_a_complete_release(wtc_raw: Path, tmp_path: Path) -> None:
    res = _build(wtc_raw, tmp_path / "rel")
    assert res.ok and res.release_json and res.release_json.is_file()
    man = read_manifest(tmp_path / "rel")
    assert list(man.columns) == list(MANIFEST_COLUMNS) and len(man) == 42
    assert list(man.cell_id) == sorted(man.cell_id)  # sorted by cell id
    assert list(man.zarr_row) == list(range(42)) and man.shard.nunique() == 6  # 42 cells / 8 per shard
    assert set(man.train_test_split) == {"Train", "Task_one", "Task_two"}
    assert (man.loc[man.Structure.isin(["TJP1", "CETN2", "ACTN1"]), "train_test_split"] == "Task_two").all()
    rep = json.loads((tmp_path / "rel" / "build_report.json").read_text())
    assert rep["status"] == "ok" and rep["accounting"]["wtc11"] == {
        "units": 42,
        "units_reused": 0,
        "written": 42,
        "skipped": 0,
        "kinds": {"cells": {"in": 42, "used": 42, "skipped": 0}},
    }
    assert rep["written"]["wtc11"]["tasks"]["Task_two"] == 18
    release = json.loads(res.release_json.read_text())
    assert release["config_hash"] == config_hash(load_config(overrides=SMALL))
    assert release["extra"]["rules_sha256"]["wtc11"]
    # exactly the release: no spills, staging folder, lock file or temp file left behind
    assert sorted(p.name for p in (tmp_path / "rel").iterdir()) == [
        "build_report.json",
        "manifest.csv",
        "manifest.parquet",
        "release.json",
        "shards",
        "zarr",
    ]
    assert "Task_two" in res.summary() and "cells in 42 = used 42 + skipped 0" in res.summary()


@pytest.mark.slow
def test_output_independent_of_workers_and_resumes_from_spills(
    wtc_raw: Path, tmp_path: Path, hash_tree
) -> None:
    tree_hashes = hash_tree
    a = _build(wtc_raw, tmp_path / "a", workers=2)
    _build(wtc_raw, tmp_path / "b", workers=1, keep_work=True)
    assert tree_hashes(tmp_path / "a") == tree_hashes(tmp_path / "b")
    assert a.accounting()["wtc11"]["written"] == 42
    # a rerun reuses every spill; a config change invalidates them
    again = _build(wtc_raw, tmp_path / "b", workers=1, keep_work=True)
    assert again.accounting()["wtc11"]["units_reused"] == 42
    assert tree_hashes(tmp_path / "b") == tree_hashes(tmp_path / "a")
    # the shard size and other sources' settings do not invalidate finished units; wtc11 settings do
    reshard = _build(
        wtc_raw,
        tmp_path / "b",
        workers=1,
        keep_work=True,
        config={"cells_per_shard": 5, "hpa": {"crop": 256}},
    )
    assert reshard.accounting()["wtc11"]["units_reused"] == 42
    assert read_manifest(tmp_path / "b").shard.nunique() == 9
    changed = _build(wtc_raw, tmp_path / "b", workers=1, config={"wtc11": {"high_pct": 99.0}})
    assert changed.accounting()["wtc11"]["units_reused"] == 0
    assert tree_hashes(tmp_path / "b") != tree_hashes(tmp_path / "a")


def test_unassigned_cells_are_kept_and_reported(wtc_copy: Path, tmp_path: Path) -> None:
    table = pd.read_csv(wtc_copy / "metadata.csv")
    table.loc[table.index[:3], "structure_name"] = "LMNB1"  # in no task rule
    table.to_csv(wtc_copy / "metadata.csv", index=False)
    res = _build(wtc_copy, tmp_path / "rel")
    assert res.ok and len(res.unassigned) == 3
    man = read_manifest(tmp_path / "rel")
    assert (man.loc[man.Structure == "LMNB1", "train_test_split"] == "").all()
    assert not man.loc[man.Structure == "LMNB1", ["Task_one", "Task_two"]].to_numpy().any()
    rep = json.loads((tmp_path / "rel" / "build_report.json").read_text())
    assert len(rep["unassigned"]) == 3 and rep["unassigned"][0]["groups"]["Structure"] == "LMNB1"


def test_config_merge_and_errors(tmp_path: Path) -> None:
    assert deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"b": 3}}) == {"a": {"b": 3, "c": 2}}
    path = tmp_path / "c.yaml"
    path.write_text("cells_per_shard: 5\nwtc11: {low_pct: 1}\n")
    cfg = load_config(path)
    assert cfg["cells_per_shard"] == 5 and cfg["wtc11"] == {"low_pct": 1} and "tasks" in cfg
    path.write_text("- 1\n")
    with pytest.raises(ValueError, match="mapping"):
        load_config(path)
    with pytest.raises(ValueError, match="cells_per_shard"):
        load_config(overrides={"cells_per_shard": 0})
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match="unknown key"):
        load_config(overrides={"border": "skip"})  # source options belong in the source's section
    with pytest.raises(KeyError, match="valid: wtc11, hpa, cp, chammi"):
        resolve_sources("nope")
    assert list(resolve_sources("all")) == ["wtc11", "hpa", "cp"]
    with pytest.raises(ValueError, match="on its own"):
        resolve_sources(["chammi", "wtc11"])
    with pytest.raises(ValueError, match="needs --input"):
        build("chammi", output=tmp_path / "o", progress=False, processes=False)


def test_ordering_and_shard_plan() -> None:
    cells = [
        {
            "cell_id": f"wtc11-{c}",
            "source": "wtc11",
            "unit_pos": p,
            "index": i,
            "spill": "s",
            "split": "Train",
            "tasks": [],
        }
        for c, p, i in (("b", 0, 1), ("a", 1, 0), ("c", 0, 0))
    ]
    assert [c["cell_id"] for c in order_cells(cells, "cell_id")] == ["wtc11-a", "wtc11-b", "wtc11-c"]
    assert [c["cell_id"] for c in order_cells(cells, "unit")] == ["wtc11-c", "wtc11-b", "wtc11-a"]
    plans, groups = plan_shards(cells, 2)
    assert [(g.first_row, g.rows) for g in groups["wtc11"]] == [(0, 3)]  # a CHAMMI source is one group
    assert [(p["index"], p["zarr_start"], len(p["entries"])) for p in plans["wtc11"]] == [
        (0, 0, 2),
        (1, 2, 1),
    ]
    with pytest.raises(ValueError, match="unknown cell order"):
        order_cells(cells, "random")


@pytest.mark.slow
def test_existing_scheduler_gives_the_same_release(wtc_raw: Path, tmp_path: Path, hash_tree) -> None:
    from dask.distributed import LocalCluster

    _build(wtc_raw, tmp_path / "local", workers=1)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        res = build(
            "wtc11",
            input_dir=wtc_raw,
            output=tmp_path / "remote",
            scheduler=cluster.scheduler_address,
            config=SMALL,
            progress=False,
        )
        assert res.ok
        assert len(cluster.scheduler.workers) == 2  # the cluster outlives the build (only the client closed)
    assert hash_tree(tmp_path / "remote") == hash_tree(tmp_path / "local")


@pytest.mark.slow
def test_all_sources_from_the_embedded_sample(tmp_path: Path, hash_tree) -> None:
    """No --input: the sample raw data is generated and all three sources go into one release.

    The shards of a source are written while the next sources' units still run; a one-worker build of the
    same raw data (no overlap to speak of) must give the same bytes."""
    from chammi_data.format.vocab import LOGO_TASKS, SOURCES

    res = build(
        "all",
        output=tmp_path / "rel",
        workers=2,
        progress=False,
        processes=False,
        config={"cells_per_shard": 16},
        keep_work=True,
    )
    assert res.ok and (tmp_path / "rel" / ".work" / "sample_raw" / "cp").is_dir()
    one = build(
        "all",
        input_dir=tmp_path / "rel" / ".work" / "sample_raw",
        output=tmp_path / "one",
        workers=1,
        progress=False,
        processes=False,
        config={"cells_per_shard": 16},
    )
    assert one.ok and hash_tree(tmp_path / "one") == hash_tree(tmp_path / "rel")
    man = read_manifest(tmp_path / "rel")
    assert list(man.source.drop_duplicates()) == ["wtc11", "hpa", "cp"]
    for key, info in SOURCES.items():
        part = man[man.source == key]
        assert (part.train_test_split == "Train").sum() > 0, key
        for task in info.tasks:  # every task of every source has cells
            assert part[task].sum() > 0, (key, task)
        labels_train = set(part.label[part.train_test_split == "Train"])
        assert len(labels_train) >= 2, key
    for (key, task), group in LOGO_TASKS.items():
        part = man[(man.source == key) & man[task]]
        assert part[group].nunique() >= 2, (key, task)
    rep = json.loads((tmp_path / "rel" / "build_report.json").read_text())
    assert set(rep["accounting"]["hpa"]["kinds"]) == {"fields", "cells"}
    assert set(rep["accounting"]["cp"]["kinds"]) == {"plates", "sites", "cells"}
    assert "hpa: fields in " in res.summary() and "; cells in " in res.summary()
    for acc in rep["accounting"].values():
        for t in acc["kinds"].values():
            assert t["in"] == t["used"] + t["skipped"] > 0


def test_an_item_dropped_without_a_skip_fails_the_build(
    wtc_raw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``in`` is counted where the items are found (the metadata rows), so a pipeline that loses one is
    caught."""
    from pipelines.sources.wtc11.pipeline import WTC11Pipeline

    real = WTC11Pipeline.discover

    def loses_a_row(self, input_dir, opts):
        found = real(self, input_dir, opts)
        found.units.pop()
        return found

    monkeypatch.setattr(WTC11Pipeline, "discover", loses_a_row)
    res = _build(wtc_raw, tmp_path / "rel")
    assert not res.ok and "wtc11 cells: in 42 != used 41 + skipped 0" in res.failed
    assert not (tmp_path / "rel" / "release.json").exists()
    rep = json.loads((tmp_path / "rel" / "build_report.failed.json").read_text())
    assert rep["accounting"]["wtc11"]["kinds"]["cells"] == {"in": 42, "used": 41, "skipped": 0}


def test_a_cell_dropped_inside_a_unit_fails_the_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipelines.sources.base import UnitResult
    from pipelines.sources.official.pipeline import OfficialPipeline, write_official_sample

    root = write_official_sample(tmp_path / "CHAMMI", seed=1, cells_per_source=10)
    real = OfficialPipeline.process

    def loses_a_cell(self, unit, opts):
        result = real(self, unit, opts)
        return UnitResult(
            result.cells[1:] if unit.unit_id == "cp-rows-000000000" else result.cells, result.skipped
        )

    monkeypatch.setattr(OfficialPipeline, "process", loses_a_cell)
    res = quiet_build("chammi", root, tmp_path / "rel", per=4)
    assert not res.ok and "chammi rows: in 30 != used 29 + skipped 0" in res.failed
    assert "FAILED: accounting does not add up" in res.summary()
