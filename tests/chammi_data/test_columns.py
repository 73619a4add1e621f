"""Manifest rows held column by column: the same rows, values and fingerprint as the DataFrame's."""

from __future__ import annotations

import hashlib

import numpy as np

from chammi_data.format.manifest import read_manifest
from chammi_data.loading.columns import CodedColumn, RowColumns, TextColumn


def test_rows_values_and_fingerprint_equal_the_dataframe(tiny_release):
    manifest = read_manifest(tiny_release)
    rows = manifest[manifest["source"] != "wtc11"]  # a selection: the index is the manifest row
    cols = RowColumns(rows)
    assert len(cols) == len(rows) and list(cols.index) == list(rows.index)
    assert isinstance(cols["source"], CodedColumn) and isinstance(cols["meta"], TextColumn)
    for i, expected in enumerate(rows.to_dict("records")):
        got = cols.row(i)
        assert {k: (v.item() if isinstance(v, np.generic) else v) for k, v in got.items()} == expected
    ids = rows["cell_id"].tolist()
    assert cols.fingerprint() == hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]
    values, codes = cols.codes("cell_id")
    assert [values[c] for c in codes] == ids
