"""Manifest read/write: exact columns and types, deterministic bytes, clear errors."""

from __future__ import annotations

import filecmp
from pathlib import Path

import pandas as pd
import pytest

from chammi_data.format.manifest import (
    ReleaseNotFoundError,
    read_manifest,
    read_release_json,
    source_rows,
    write_manifest,
)
from chammi_data.format.release_format import MANIFEST_COLUMNS, parse_meta


def test_types_and_order(tiny_release: Path):
    m = read_manifest(tiny_release)
    assert list(m.columns) == list(MANIFEST_COLUMNS)
    for t in ("Task_one", "Task_two", "Task_three", "Task_four"):
        assert m[t].dtype == bool
    assert m["offset"].dtype == "int64" and m["zarr_row"].dtype == "int64"
    hpa = source_rows(m, "HPA")
    assert hpa["zarr_row"].tolist() == list(range(len(hpa))) and set(hpa["source"]) == {"hpa"}
    assert isinstance(parse_meta(hpa.iloc[0]["meta"]), dict)


def test_parquet_and_csv_agree(tiny_release: Path, tmp_path: Path):
    m = read_manifest(tiny_release)
    for name in ("manifest.csv", "release.json"):
        (tmp_path / name).write_bytes((tiny_release / name).read_bytes())
    pd.testing.assert_frame_equal(read_manifest(tmp_path), m)  # CSV fallback gives the same frame


def test_write_twice_identical_bytes(tiny_release: Path, tmp_path: Path):
    m = read_manifest(tiny_release)
    write_manifest(tmp_path / "a", m)
    write_manifest(tmp_path / "b", m)
    for name in ("manifest.parquet", "manifest.csv"):
        assert filecmp.cmp(tmp_path / "a" / name, tmp_path / "b" / name, shallow=False)
        assert filecmp.cmp(tmp_path / "a" / name, tiny_release / name, shallow=False)


def test_missing_release_says_how_to_build(tmp_path: Path, monkeypatch):
    with pytest.raises(ReleaseNotFoundError, match="chammi-build"):
        read_manifest(tmp_path / "nothing")
    monkeypatch.setenv("CHAMMI_RELEASE", str(tmp_path / "env"))
    with pytest.raises(ReleaseNotFoundError, match="env"):
        read_release_json()


def test_bad_boolean_names_row(tiny_release: Path, tmp_path: Path):
    m = read_manifest(tiny_release).astype({"Task_two": object})
    m.loc[3, "Task_two"] = "maybe"
    with pytest.raises(ValueError, match="Task_two row 3"):
        write_manifest(tmp_path, m)


def test_missing_column(tiny_release: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="sha256"):
        write_manifest(tmp_path, read_manifest(tiny_release).drop(columns="sha256"))
