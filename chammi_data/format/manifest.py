"""The release manifest (one row per cell) and ``release.json``: write, read, select.

``manifest.parquet`` is the source of truth; ``manifest.csv`` is the same table for people and spreadsheets.
Columns are exactly ``release_format.MANIFEST_COLUMNS`` with fixed types (:data:`MANIFEST_SCHEMA`); rows are
grouped by source in ``SOURCE_KEYS`` order and, within a source, in feature order (row i of a source = feature
row i = zarr row i).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from chammi_data.format.release_format import (
    BOOL_COLUMNS,
    CELL_ID_PATTERN,
    INT_COLUMNS,
    MANIFEST_COLUMNS,
    OPTIONAL_COLUMNS,
    check_cell_id,
    parse_bool_column,
)
from chammi_data.format.vocab import SOURCE_KEYS, source_info
from chammi_data.store.storage import ReleaseNotFoundError, ReleaseStore, RemoteObjectError, open_store

__all__ = [
    "MANIFEST_CSV",
    "MANIFEST_PARQUET",
    "MANIFEST_SCHEMA",
    "RELEASE_JSON",
    "ManifestDigestError",
    "ReleaseNotFoundError",
    "read_manifest",
    "read_release_json",
    "source_rows",
    "sources_in",
    "write_manifest",
]

#: Rows per parquet row group of the manifest.
ROW_GROUP = 1 << 18
#: Manifest columns whose values are (nearly) all distinct: written without a dictionary.
UNIQUE_COLUMNS = ("cell_id", "key", "offset", "nbytes", "zarr_row", "sha256", "crc32c", "meta")

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


class ManifestDigestError(ValueError):
    """The manifest's bytes differ from the sha256 that ``release.json`` records (edited or corrupted)."""


def _missing(store: ReleaseStore, what: str) -> ReleaseNotFoundError:
    if store.is_local:
        return ReleaseNotFoundError(
            f"no release at {store} ({what} not found): run `chammi-build` (or `chammi demo`) to build one, "
            f"or pass root= / set $CHAMMI_RELEASE to an existing release folder or URL"
        )
    return ReleaseNotFoundError(
        f"no release at {store} ({what} not found): check the location; credentials: {store.credentials()}"
    )


def _read(store: ReleaseStore, name: str) -> bytes | None:
    """The bytes of a release file, None when it does not exist (a refused remote read is an error)."""
    try:
        return store.read_bytes(name)
    except RemoteObjectError as exc:
        if exc.missing:
            return None
        raise
    except (FileNotFoundError, NotADirectoryError):
        return None


def _coerce(df: pd.DataFrame) -> pd.DataFrame:
    """Exactly MANIFEST_COLUMNS in order, with bool / int64 / str types and valid cell ids; errors name the
    bad column and row."""
    df = df.assign(**{c: v for c, v in OPTIONAL_COLUMNS.items() if c not in df.columns})
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
    # Row groups of ROW_GROUP rows (decoded in parallel when a release is opened: a 2.8 M-row CHAMMI-75
    # manifest reads in a few seconds, not eleven) and dictionaries only for the columns with few values (a
    # dictionary of 2.8 M distinct ids or meta texts only slows the reader). No timestamps exist in parquet;
    # the created_by string is fixed per pyarrow, so the bytes depend only on the rows.
    pq.write_table(
        table,
        tmp_p,
        compression="zstd",
        row_group_size=ROW_GROUP,
        use_dictionary=[c for c in MANIFEST_COLUMNS if c not in UNIQUE_COLUMNS],
        write_statistics=True,
    )
    df.to_csv(tmp_c, index=False, lineterminator="\n")
    os.replace(tmp_p, parquet)
    os.replace(tmp_c, csv)
    return parquet, csv


def read_manifest(
    root: Any = None, storage_options: Mapping[str, Any] | None = None, verify: bool = True
) -> pd.DataFrame:
    """The manifest of the release at ``root`` (a folder, a URL, a :class:`ReleaseStore`; default:
    ``paths.default_release_location()``).

    Task columns are bool, sizes/offsets/rows int64, the rest str; cell ids are checked. With ``verify`` (the
    default) the manifest's sha256 must equal the one ``release.json`` records, so an edited row (an offset
    pointing at another cell, a changed label or split) is refused (:class:`ManifestDigestError`) instead of
    being used. Raises :class:`ReleaseNotFoundError` when there is no release at ``root``.
    """
    store = open_store(root, storage_options)
    data = _read(store, MANIFEST_PARQUET)
    name, digest_field = MANIFEST_PARQUET, "manifest_sha256"
    if data is None:
        data = _read(store, MANIFEST_CSV)
        name, digest_field = MANIFEST_CSV, "manifest_csv_sha256"
    if data is None:
        raise _missing(store, MANIFEST_PARQUET)
    if verify:
        expected = read_release_json(store).get(digest_field)
        got = hashlib.sha256(data).hexdigest()
        if expected != got:
            raise ManifestDigestError(
                f"{store.path(name)}: sha256 {got[:16]}... differs from {RELEASE_JSON} "
                f"({str(expected)[:16]}...): the "
                "manifest was edited or corrupted; rebuild the release (chammi-build) or check it with "
                "chammi validate"
            )
    try:
        if name == MANIFEST_PARQUET:
            df = pq.read_table(io.BytesIO(data)).to_pandas()
        else:
            df = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
    except Exception as exc:
        raise ValueError(f"cannot read {store.path(name)}: {type(exc).__name__}: {exc}") from None
    return _coerce(df)


def read_release_json(root: Any = None, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The parsed ``release.json`` of the release at ``root`` (default location when None).

    A release without ``release.json`` is missing, incomplete or being rebuilt: :class:`ReleaseNotFoundError`.
    """
    store = open_store(root, storage_options)
    data = _read(store, RELEASE_JSON)
    if data is None:
        raise _missing(store, RELEASE_JSON)
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{store.path(RELEASE_JSON)} is not valid JSON: {exc}") from None


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
