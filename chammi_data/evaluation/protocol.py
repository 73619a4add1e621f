"""The evaluator's inputs on the manifest side: any manifest form reduced to the protocol's tables.

Manifests come in several forms (our release at any location, an official root, a merged CSV, DataFrames);
each is reduced to one :class:`ProtocolTable` per source holding only what the protocol uses: labels, the
Train mask, the task masks and the grouping columns. Every failure raises
:class:`~chammi_data.evaluation.features.EvaluationInputError` naming the source, task, column and rows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from chammi_data.evaluation.features import EvaluationInputError, rows_text, source_key
from chammi_data.format.release_format import parse_bool, train_mask
from chammi_data.format.vocab import LOGO_TASKS, SOURCE_KEYS, SOURCES
from chammi_data.store.paths import file_sha256
from chammi_data.store.storage import ReleaseStore, open_store


@dataclass
class ProtocolTable:
    """What the protocol needs from one source's manifest rows (row i = feature row i)."""

    key: str
    origin: str
    labels: np.ndarray  #: (N,) str
    train: np.ndarray  #: (N,) bool
    tasks: dict[str, np.ndarray]  #: task -> (N,) bool
    groups: dict[str, np.ndarray] = field(default_factory=dict)  #: column -> (N,) str

    def __len__(self) -> int:
        return len(self.labels)

    def group(self, column: str, task: str, rows: np.ndarray) -> np.ndarray:
        values = self.groups[column][rows]
        empty = rows[values == ""]
        if len(empty):
            raise EvaluationInputError(
                f"source {self.key}, task {task}: grouping column {column} is empty in {rows_text(empty)}"
            )
        return values

    def digest(self) -> str:
        """sha256 of everything the protocol reads (labels, splits, tasks, groups), whatever the input
        form."""
        h = hashlib.sha256(self.key.encode())
        for part in (self.labels, self.train, *self.tasks.values(), *self.groups.values()):
            h.update("\x1f".join(map(str, part.tolist())).encode())
        return h.hexdigest()


def task_rows(table: ProtocolTable, task: str) -> np.ndarray:
    """Row indices of a task's queries; an empty task is an error."""
    rows = np.flatnonzero(table.tasks[task])
    if not len(rows):
        raise EvaluationInputError(
            f"source {table.key} ({SOURCES[table.key].folder}), task {task}: no row is marked True "
            f"({table.origin})"
        )
    return rows


def _bool_column(df: pd.DataFrame, col: str, key: str, origin: str) -> np.ndarray:
    values = df[col]
    if values.dtype == bool:
        return values.to_numpy()
    bad = []
    out = np.zeros(len(values), dtype=bool)
    for i, v in enumerate(values.tolist()):
        try:
            out[i] = parse_bool(v)
        except ValueError:
            bad.append(i)
    if bad:
        rows = np.asarray(bad)
        raise EvaluationInputError(
            f"source {key}, column {col}: values {values.iloc[bad[0]]!r}... are not booleans in "
            f"{rows_text(rows)} ({origin})"
        )
    return out


def _text_column(df: pd.DataFrame, col: str) -> np.ndarray:
    return df[col].fillna("").astype(str).str.strip().to_numpy()


def protocol_table(df: pd.DataFrame, key: str, origin: str) -> ProtocolTable:
    """Reduce one source's rows (our columns or the official ones) to a checked :class:`ProtocolTable`."""
    info = SOURCES[key]
    where = f"source {key} ({info.folder}, {origin})"
    label_col = "label" if "label" in df.columns else "Label" if "Label" in df.columns else None
    if label_col is None:
        raise EvaluationInputError(
            f"{where}: no label column (`Label` or `label`); columns: {list(df.columns)}"
        )
    if "train_test_split" not in df.columns:
        raise EvaluationInputError(f"{where}: no `train_test_split` column; columns: {list(df.columns)}")
    labels = _text_column(df, label_col)
    train = train_mask(df["train_test_split"])
    if not train.any():
        raise EvaluationInputError(f"{where}: no `Train` rows: the 1-NN reference would be empty")
    tasks, used = {}, train.copy()
    for task in info.tasks:
        if task not in df.columns:
            raise EvaluationInputError(
                f"{where}, task {task}: task column `{task}` is missing; columns: {list(df.columns)}"
            )
        tasks[task] = _bool_column(df, task, key, origin)
        used |= tasks[task]
    groups = {}
    for (src, task), column in LOGO_TASKS.items():
        if src == key:
            if column not in df.columns:
                raise EvaluationInputError(f"{where}, task {task}: grouping column `{column}` is missing")
            groups[column] = _text_column(df, column)
    unlabeled = np.flatnonzero(used & (labels == ""))
    if len(unlabeled):
        raise EvaluationInputError(f"{where}: empty `{label_col}` in Train/task {rows_text(unlabeled)}")
    return ProtocolTable(key=key, origin=origin, labels=labels, train=train, tasks=tasks, groups=groups)


def _split_frame(df: pd.DataFrame, origin: str) -> dict[str, pd.DataFrame]:
    """A single table of several sources -> {key: rows in order}; ours has `source`, merged official
    `chunk`."""
    col = (
        "source"
        if "label" in df.columns and "source" in df.columns
        else "chunk"
        if "chunk" in df.columns
        else None
    )
    if col is None:
        raise EvaluationInputError(
            f"{origin}: a single table needs a `source` (our manifest) or `chunk` (official merged CSV) "
            "column"
        )
    out: dict[str, pd.DataFrame] = {}
    for name in pd.unique(df[col].astype(str)):
        part = df[df[col].astype(str) == name]
        if col == "source" and "zarr_row" in part.columns:
            part = part.sort_values("zarr_row", kind="stable")  # our feature order (manifest.source_rows)
        out[source_key(name)] = part.reset_index(drop=True)
    return out


def _read_release(store: ReleaseStore) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    """Our release at any location: the manifest, checked against the digest ``release.json`` records."""
    from chammi_data.format.manifest import MANIFEST_PARQUET, read_manifest, read_release_json

    rel = read_release_json(store)
    manifest = read_manifest(store)
    prov: dict[str, Any] = {
        "manifest_path": store.path(MANIFEST_PARQUET),
        "kind": "release",
        "manifest_sha256": rel.get("manifest_sha256"),
        "release_manifest_sha256": rel.get("manifest_sha256"),
        "release_config_hash": rel.get("config_hash"),
        "release_package_version": rel.get("package_version"),
    }
    return _split_frame(manifest, prov["manifest_path"]), prov


def _read_location(location: Any) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    """A release (folder, URL or store), an official root, or one metadata file."""
    if isinstance(location, ReleaseStore) or "://" in str(location):
        return _read_release(open_store(location))
    path = Path(location)
    if path.is_dir() and ((path / "manifest.parquet").is_file() or (path / "manifest.csv").is_file()):
        return _read_release(open_store(path))
    prov: dict[str, Any] = {"manifest_path": str(path)}
    if path.is_dir():
        frames = _read_official(path)
        files = [path / SOURCES[k].folder / "enriched_meta.csv" for k in frames]
        if all(f.is_file() for f in files):
            prov.update(kind="official", metadata_sha256={f.parent.name: file_sha256(f) for f in files})
        else:  # a merged CSV (column `chunk`) at the root
            prov.update(
                kind="official", metadata_sha256={f.name: file_sha256(f) for f in sorted(path.glob("*.csv"))}
            )
        return frames, prov
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist")
    prov.update(kind="file", manifest_sha256=file_sha256(path))
    df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, low_memory=False)
    return _split_frame(df, str(path)), prov


def _read_official(root: Path) -> dict[str, pd.DataFrame]:
    """{key: metadata} of an official root (per-source ``enriched_meta.csv`` or a merged CSV)."""
    from chammi_data.interop.official_layout import read_official_metadata

    return {source_key(k): df for k, df in read_official_metadata(root).items()}


def load_protocol_tables(
    manifest: Any, sources: list[str] | None = None
) -> tuple[dict[str, ProtocolTable], dict[str, Any]]:
    """{source key: ProtocolTable} (+ provenance: paths, file sha256, release ids, protocol digest) from any
    supported manifest form; ``sources`` limits which sources must be present."""
    if isinstance(manifest, str | Path | ReleaseStore):
        frames, prov = _read_location(manifest)
        origin = str(manifest)
    elif isinstance(manifest, pd.DataFrame):
        frames, prov, origin = (
            _split_frame(manifest, "manifest DataFrame"),
            {"kind": "dataframe"},
            "manifest DataFrame",
        )
    elif isinstance(manifest, Mapping):
        frames = {source_key(k): v.reset_index(drop=True) for k, v in manifest.items()}
        prov, origin = {"kind": "dataframes"}, "manifest mapping"
    else:
        raise EvaluationInputError(
            f"unsupported manifest type {type(manifest).__name__}: give a path, a DataFrame or "
            f"{{source: DataFrame}}"
        )
    wanted = sources if sources is not None else [k for k in SOURCE_KEYS if k in frames]
    missing = [k for k in wanted if k not in frames]
    if missing:
        raise EvaluationInputError(
            f"features given for source(s) {missing} but the manifest ({origin}) has only {sorted(frames)}"
        )
    tables = {k: protocol_table(frames[k], k, origin) for k in wanted}
    prov["protocol_sha256"] = {SOURCES[k].folder: t.digest() for k, t in tables.items()}
    return tables, prov
