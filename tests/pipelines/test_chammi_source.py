"""The official-release converter: every column kept, official splits and row order, bad rows reported."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from chammi_data.format.manifest import read_manifest
from chammi_data.format.vocab import SOURCES, TASK_COLUMNS
from chammi_data.interop.official_layout import META_FILE
from pipelines.sources.official.pipeline import write_official_sample
from tests.pipelines.helpers import quiet_build


def test_official_download_converts_with_official_order_and_tasks(tmp_path: Path) -> None:
    root = write_official_sample(tmp_path / "CHAMMI", seed=1, cells_per_source=10)
    cp_meta = root / "CP" / META_FILE
    table = pd.read_csv(cp_meta, dtype=str, keep_default_na=False)
    (root / table.file_path[3]).unlink()  # a row pointing at a missing image
    res = quiet_build(
        "chammi", root, tmp_path / "rel", workers=2, per=4, config={"chammi": {"chunk_rows": 3}}
    )
    assert res.ok
    man = read_manifest(tmp_path / "rel")
    assert list(man.source.drop_duplicates()) == ["wtc11", "hpa", "cp"]
    for key, info in SOURCES.items():
        official = pd.read_csv(root / info.folder / META_FILE, dtype=str, keep_default_na=False)
        if key == "cp":
            official = official.drop(index=3)
        mine = man[man.source == key].reset_index(drop=True)
        metas = [json.loads(m) for m in mine.meta]
        # the official row order, every original column kept verbatim
        assert [m["file_path"] for m in metas] == list(official.file_path)
        assert metas[0] == official.iloc[0].to_dict()
        assert list(mine.label) == list(official.Label)
        assert list(mine.train_test_split) == list(official.train_test_split)
        for t in TASK_COLUMNS:
            want = (
                official[t].str.lower().eq("true")
                if t in official
                else pd.Series(False, index=official.index)
            )
            assert list(mine[t]) == list(want), (key, t)
        assert list(mine[info.group_column]) == list(official[info.group_column])
    assert list(man[man.source == "cp"].dataset) == list(table.drop(index=3).source)
    rep = json.loads((tmp_path / "rel" / "build_report.json").read_text())
    (skip,) = rep["skipped"]
    assert skip["row"] == 3 and "not found" in skip["reason"] and skip["source"] == "cp"
    assert rep["accounting"]["chammi"]["kinds"] == {"rows": {"in": 30, "used": 29, "skipped": 1}}
