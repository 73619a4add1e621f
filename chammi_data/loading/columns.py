"""The selected manifest rows of a reader, held column by column without a Python object per row.

A full CHAMMI-75 release has 2.8 M rows: one dict per row (``DataFrame.to_dict("records")``) takes tens of
seconds and gigabytes, and so does one Python string per row and column. :class:`RowColumns` keeps each
column as it is cheapest to index: numbers as numpy arrays, text with few distinct values (source, channels,
shard, dtype, split...) as codes into the distinct values, the text of :data:`UNIQUE_TEXT` (ids, sha256,
``meta``) as the Arrow array pandas already holds (no copy; one string is made when a row is read).
``rows.row(i)`` is the manifest row as a dict, ``rows[name][i]`` one value. Opening a 2.8 M-row release for
``load`` or ``stream`` takes a few seconds (``benchmarks/results/chammi75.md``). Picklable: DataLoader workers
get it by fork or by pickle.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

#: text columns whose values are (nearly) all distinct: kept as Arrow arrays; the others are coded
UNIQUE_TEXT = ("cell_id", "key", "sha256", "meta")


class CodedColumn:
    """A text column as int32 codes into its distinct values: ``col[i]`` is a str (shared objects)."""

    def __init__(self, values: list[str], codes: np.ndarray) -> None:
        self.values, self.codes = values, codes

    def __getitem__(self, i: int) -> str:
        return self.values[self.codes[i]]

    def __len__(self) -> int:
        return len(self.codes)


class TextColumn:
    """A text column kept as its Arrow array (chunked as pandas holds it: no copy): ``col[i]`` makes the one
    str it returns."""

    def __init__(self, array: pa.Array | pa.ChunkedArray) -> None:
        self.array = array

    def __getitem__(self, i: int) -> str:
        return self.array[int(i)].as_py()

    def __len__(self) -> int:
        return len(self.array)


def column(series: pd.Series, unique: bool) -> Any:
    """The cheapest indexable form of one manifest column (module docstring); ``unique``: its values are
    (nearly) all distinct."""
    if series.dtype == bool or pd.api.types.is_integer_dtype(series.dtype):
        return series.to_numpy()
    text = pa.array(series.astype(str) if series.dtype == object else series)  # no copy for Arrow strings
    if unique:
        return TextColumn(text)
    encoded = pc.dictionary_encode(text)
    encoded = encoded.combine_chunks() if isinstance(encoded, pa.ChunkedArray) else encoded
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int32)
    return CodedColumn(encoded.dictionary.to_pylist(), codes)


class RowColumns:
    """Selected manifest rows, column by column (module docstring); ``index`` is their manifest row."""

    def __init__(self, rows: pd.DataFrame) -> None:
        self.names = list(rows.columns)
        self.columns = {c: column(rows[c], c in UNIQUE_TEXT) for c in self.names}
        self.index = rows.index.to_numpy(dtype=np.int64)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, name: str) -> Any:
        return self.columns[name]

    def row(self, i: int) -> dict[str, Any]:
        """Row ``i`` as a dict of manifest column -> value (numbers as numpy scalars)."""
        return {c: col[i] for c, col in self.columns.items()}

    def codes(self, name: str) -> tuple[list[str], np.ndarray]:
        """(distinct values, int codes per row) of a text column, whatever its stored form."""
        col = self.columns[name]
        if isinstance(col, CodedColumn):
            return col.values, col.codes
        encoded = pc.dictionary_encode(col.array)
        encoded = encoded.combine_chunks() if isinstance(encoded, pa.ChunkedArray) else encoded
        return encoded.dictionary.to_pylist(), encoded.indices.to_numpy(zero_copy_only=False).astype(np.int32)

    def fingerprint(self, name: str = "cell_id") -> str:
        """sha256 (first 16 hex digits) of the column's values joined by newlines, built by Arrow."""
        col = self.columns[name]
        text = col.array if isinstance(col, TextColumn) else pa.array(np.asarray(col.values)[col.codes])
        text = text.cast(pa.large_string())
        text = text.combine_chunks() if isinstance(text, pa.ChunkedArray) else text
        lists = pa.ListArray.from_arrays(pa.array([0, len(text)], pa.int32()), text)
        joined = pc.binary_join(lists, pa.scalar("\n", pa.large_string()))[0]
        return hashlib.sha256(joined.as_buffer() or b"").hexdigest()[:16]
