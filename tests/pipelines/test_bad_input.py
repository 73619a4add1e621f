"""A corpus of bad WTC-11 inputs: each is skipped and listed with file/row/reason; counts add up; --strict
fails."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import pipelines.sources.wtc11.synth as wtc11_synth
from tests.pipelines.helpers import quiet_build

#: row -> (what is broken, a word the reason must contain)
CORPUS = {
    1: ("truncated TIFF", "unreadable"),
    2: ("two-channel image", "wrong channel count"),
    3: ("file deleted", "missing file"),
    4: ("float image with NaN/inf", "non-finite pixels"),
    5: ("constant image", "constant image"),
    6: ("unknown label", "unknown label"),
}


def _corrupt(root: Path) -> pd.DataFrame:
    table = pd.read_csv(root / "metadata.csv")
    path = {r: root / table.crop_raw[r] for r in CORPUS}
    data = path[1].read_bytes()
    path[1].write_bytes(data[: len(data) // 2])
    wtc11_synth.write_ome(
        path[2],
        np.ones((2, 2, 40, 50), np.uint16) * np.arange(50, dtype=np.uint16),
        ["dna", "membrane"],
        "0-0-0-0-2",
    )
    path[3].unlink()
    bad = np.random.default_rng(0).random((2, 3, 40, 50)).astype(np.float32)
    bad[0, 1, 5, 5], bad[1, 2, 7, 7] = np.nan, np.inf
    wtc11_synth.write_ome(path[4], bad, wtc11_synth.NAME_DICT["crop_raw"], "0-0-0-0-4")
    wtc11_synth.write_ome(
        path[5], np.full((2, 3, 40, 50), 700, np.uint16), wtc11_synth.NAME_DICT["crop_raw"], "0-0-0-0-5"
    )
    table.loc[6, "cell_stage"] = "M9"
    table = pd.concat([table, table.iloc[[0]]], ignore_index=True)  # duplicate CellId at the last row
    table.to_csv(root / "metadata.csv", index=False)
    return table


def test_bad_inputs_are_skipped_and_listed(wtc_copy: Path, tmp_path: Path) -> None:
    table = _corrupt(wtc_copy)
    res = quiet_build("wtc11", wtc_copy, tmp_path / "rel", workers=2, per=16)
    assert res.ok
    rep = json.loads((tmp_path / "rel" / "build_report.json").read_text())
    acc = rep["accounting"]["wtc11"]
    n_rows = len(table)
    assert acc["kinds"] == {
        "cells": {"in": n_rows, "used": n_rows - len(CORPUS) - 1, "skipped": len(CORPUS) + 1}
    }
    by_row = {s["row"]: s for s in rep["skipped"]}
    for row, (what, word) in CORPUS.items():
        assert word in by_row[row]["reason"], (what, by_row[row])
        assert by_row[row]["source"] == "wtc11" and by_row[row]["file"], what
    assert by_row[3]["file"] == table.crop_raw[3]  # relative to the input folder
    assert "duplicate CellId" in by_row[n_rows - 1]["reason"] and by_row[n_rows - 1]["file"].endswith(
        "metadata.csv"
    )
    man = pd.read_parquet(tmp_path / "rel" / "manifest.parquet")
    assert len(man) == acc["written"] == n_rows - len(CORPUS) - 1
    assert set(rep["skipped_by_reason"]) >= {
        "missing file",
        "constant image",
        "unknown label cell_stage",
        "wrong channel count",
        "unreadable OME-TIFF",
        "non-finite pixels",
        "duplicate CellId",
    }
    assert "skipped by reason" in res.summary()


@pytest.mark.slow
def test_strict_fails_without_writing_a_release(wtc_copy: Path, tmp_path: Path) -> None:
    _corrupt(wtc_copy)
    res = quiet_build("wtc11", wtc_copy, tmp_path / "rel", strict=True)
    assert not res.ok and "--strict" in res.failed
    rep = json.loads((tmp_path / "rel" / "build_report.failed.json").read_text())
    assert rep["status"] == "failed" and len(rep["skipped"]) == len(CORPUS) + 1
    assert not (tmp_path / "rel" / "release.json").exists() and not (tmp_path / "rel" / "shards").exists()
