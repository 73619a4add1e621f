"""The release manifest (one row per cell) and ``release.json``: write, read, select.

``manifest.parquet`` is the source of truth; ``manifest.csv`` is the same table for people and
spreadsheets. Columns are exactly ``release_format.MANIFEST_COLUMNS`` with fixed types (:data:`MANIFEST_SCHEMA`);
rows are grouped by source in ``SOURCE_KEYS`` order and, within a source, in feature order (row i of a
source = feature row i = zarr row i).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from chammi_data.paths import default_release_dir
from chammi_data.release_format import (
    BOOL_COLUMNS,
    CELL_ID_PATTERN,
    INT_COLUMNS,
    MANIFEST_COLUMNS,
    check_cell_id,
    parse_bool_column,
)
from chammi_data.vocab import SOURCE_KEYS, source_info

MANIFEST_PARQUET = "manifest.parquet"
MANIFEST_CSV = "manifest.csv"
RELEASE_JSON = "release.json"



def _arrow_type(col: str) -> pa.DataType:
    if col in BOOL_COLUMNS:
        return pa.bool_()
    if col in INT_COLUMNS:
        return pa.int64()
    return pa.string()


#: Arrow schema of manifest.parquet (no pandas metadata, so the bytes depend only on the rows).
MANIFEST_SCHEMA = pa.schema([pa.field(c, _arrow_type(c), nullable=False) for c in MANIFEST_COLUMNS])


class ReleaseNotFoundError(FileNotFoundError):
    """No release at the given folder; the message says how to build one."""


def _resolve(root: str | Path | None) -> Path:
    return Path(root) if root is not None else default_release_dir()


def _missing(root: Path, what: str) -> ReleaseNotFoundError:
    return ReleaseNotFoundError(
        f"no release at {root} ({what} not found): run `chammi-build` (or `chammi demo`) to build one, "
        f"or pass root= / set $CHAMMI_RELEASE to an existing release folder"
    )


def _coerce(df: pd.DataFrame) -> pd.DataFrame:
    """Exactly MANIFEST_COLUMNS in order, with bool / int64 / str types and valid cell ids; errors name the
    bad column and row."""
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"manifest lacks column(s) {missing}; expected {list(MANIFEST_COLUMNS)}")
    out = df.loc[:, list(MANIFEST_COLUMNS)].copy()
    for col in BOOL_COLUMNS:
        out[col] = parse_bool_column(out[col], f"manifest column {col}")
    for col in INT_COLUMNS:
        out[col] = pd.to_numeric(out[col], errors="raise").astype("int64")
    for col in MANIFEST_COLUMNS:
        if col not in BOOL_COLUMNS and col not in INT_COLUMNS:
            out[col] = out[col].fillna("").astype(str)
    bad = ~out["cell_id"].str.fullmatch(CELL_ID_PATTERN.pattern) | (out["key"] != out["cell_id"])
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        cid = check_cell_id(out["cell_id"].iloc[i], f"manifest row {i}")
        raise ValueError(f"manifest row {i} ({cid}): key {out['key'].iloc[i]!r} must equal cell_id")
    return out


def write_manifest(root: str | Path, df: pd.DataFrame) -> tuple[Path, Path]:
    """Write manifest.parquet + manifest.csv atomically (deterministic bytes). Returns both paths."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    df = _coerce(df)
    table = pa.Table.from_pydict({c: df[c].tolist() for c in MANIFEST_COLUMNS}, schema=MANIFEST_SCHEMA)
    parquet, csv = root / MANIFEST_PARQUET, root / MANIFEST_CSV
    tag = uuid.uuid4().hex
    tmp_p, tmp_c = parquet.with_name(f".{parquet.name}.{tag}.tmp"), csv.with_name(f".{csv.name}.{tag}.tmp")
    # One row group, no statistics timestamps exist in parquet; the created_by string is fixed per pyarrow.
    pq.write_table(table, tmp_p, compression="zstd", row_group_size=max(len(df), 1), write_statistics=True)
    df.to_csv(tmp_c, index=False, lineterminator="\n")
    os.replace(tmp_p, parquet)
    os.replace(tmp_c, csv)
    return parquet, csv


def read_manifest(root: str | Path | None = None) -> pd.DataFrame:
    """The manifest of the release at ``root`` (default: ``paths.default_release_dir()``).

    Task columns are bool, sizes/offsets/rows int64, the rest str. Raises :class:`ReleaseNotFoundError`
    (saying how to build one) when there is no release there.
    """
    root = _resolve(root)
    parquet, csv = root / MANIFEST_PARQUET, root / MANIFEST_CSV
    if parquet.is_file():
        try:
            df = pq.read_table(parquet).to_pandas()
        except Exception as exc:
            raise ValueError(f"cannot read {parquet}: {type(exc).__name__}: {exc}") from None
    elif csv.is_file():
        df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    else:
        raise _missing(root, MANIFEST_PARQUET)
    return _coerce(df)


def read_release_json(root: str | Path | None = None) -> dict[str, Any]:
    """The parsed ``release.json`` of the release at ``root`` (default location when None)."""
    root = _resolve(root)
    path = root / RELEASE_JSON
    if not path.is_file():
        raise _missing(root, RELEASE_JSON)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None


def source_rows(manifest: pd.DataFrame, source: str) -> pd.DataFrame:
    """Rows of one source in feature order (index reset: row i = feature row i = zarr row i)."""
    key = source_info(source).key
    part = manifest[manifest["source"] == key]
    if "zarr_row" in part.columns:
        part = part.sort_values("zarr_row", kind="stable")
    return part.reset_index(drop=True)


def sources_in(manifest: pd.DataFrame) -> list[str]:
    """Source keys present in a manifest, in ``SOURCE_KEYS`` order."""
    present = set(manifest["source"])
    return [s for s in SOURCE_KEYS if s in present]
