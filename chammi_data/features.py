"""The evaluator's inputs: feature files on disk, feature checks, and manifests read into protocol tables.

Feature layout (as users of the official evaluator have it, and as ``chammi embed`` writes it):
``FEATURES/<Allen|HPA|CP>/<name>.npy`` (our keys ``wtc11|hpa|cp`` are accepted as folder names too), one
(N_source, D) float matrix per source, row i = row i of that source's metadata.

Manifests come in several forms (our release, an official root, a merged CSV, DataFrames); each is reduced
to one :class:`ProtocolTable` per source holding only what the protocol uses: labels, the Train mask, the
task masks and the grouping columns. Every failure raises :class:`EvaluationInputError` naming the source,
task, column and rows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from chammi_data.release_format import parse_bool, train_mask
from chammi_data.schema import file_sha256
from chammi_data.storage import ReleaseStore, open_store
from chammi_data.vocab import LOGO_TASKS, SOURCE_KEYS, SOURCES, source_info


class EvaluationInputError(ValueError):
    """Features or manifest do not satisfy the protocol; the message names source, task, column and rows."""


def _rows_text(rows: np.ndarray, limit: int = 8) -> str:
    shown = ", ".join(str(int(r)) for r in rows[:limit])
    return f"{len(rows)} row(s): {shown}{', ...' if len(rows) > limit else ''}"


def _key(name: str) -> str:
    try:
        return source_info(str(name)).key
    except KeyError as exc:
        raise EvaluationInputError(str(exc.args[0])) from None


# ----------------------------------------------------------------------------------------------- features
def load_features(directory: str | Path, feature_file: str | None = None) -> dict[str, np.ndarray]:
    """{source key: (N, D) array} from ``directory/<Allen|HPA|CP|wtc11|hpa|cp>/*.npy``.

    With several ``.npy`` in a folder, ``feature_file`` (name with or without ``.npy``) picks one; without it
    that is an error listing them. Folders of other names are ignored; two folders for one source are an error.
    """
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"features folder {root} does not exist")
    found: dict[str, Path] = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            key = source_info(sub.name).key
        except KeyError:
            continue
        if key in found:
            raise EvaluationInputError(
                f"features for source {key} found twice: {found[key].parent} and {sub}"
            )
        if feature_file is not None:
            name = feature_file if feature_file.endswith(".npy") else f"{feature_file}.npy"
            path = sub / name
            if not path.is_file():
                have = sorted(p.name for p in sub.glob("*.npy"))
                raise FileNotFoundError(f"feature file {path} not found; {sub} holds {have}")
        else:
            files = sorted(sub.glob("*.npy"))
            if not files:
                raise FileNotFoundError(f"no .npy feature file in {sub}")
            if len(files) > 1:
                raise EvaluationInputError(
                    f"{sub} holds several feature files {[p.name for p in files]}: pick one with --feature-file NAME"
                )
            path = files[0]
        found[key] = path
    if not found:
        folders = ", ".join(f"{i.folder}|{k}" for k, i in SOURCES.items())
        raise FileNotFoundError(f"no source folder ({folders}) with .npy features in {root}")
    out = {}
    for key in SOURCE_KEYS:
        if key in found:
            arr = np.load(found[key], allow_pickle=False)
            if arr.ndim != 2:
                raise EvaluationInputError(
                    f"{found[key]}: features must be 2-D (rows, dim), got shape {arr.shape}"
                )
            out[key] = arr
    return out


def save_features(directory: str | Path, features: Mapping[str, Any], name: str) -> dict[str, Path]:
    """Write ``directory/<Allen|HPA|CP>/<name>.npy`` per source (official folder names). Returns the paths."""
    root = Path(directory)
    stem = name[:-4] if name.endswith(".npy") else name
    if not stem or "/" in stem:
        raise ValueError(f"feature name {name!r} must be a plain file name")
    paths = {}
    for src, value in features.items():
        arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        if arr.ndim != 2:
            raise ValueError(f"features of {src} must be 2-D (rows, dim), got shape {arr.shape}")
        info = source_info(src)
        path = root / info.folder / f"{stem}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, arr, allow_pickle=False)
        paths[info.key] = path
    return paths


def check_features(features: Mapping[str, Any], metric: str) -> dict[str, np.ndarray]:
    """{source key: float (N, D) numpy array}, checked: known source, 2-D, finite, non-zero rows for cosine."""
    if not isinstance(features, Mapping) or not features:
        raise EvaluationInputError("features must be a non-empty {source: (N, D) array} mapping")
    out: dict[str, np.ndarray] = {}
    for name, value in features.items():
        key = _key(name)
        if key in out:
            raise EvaluationInputError(f"features for source {key} given twice (keys {list(features)})")
        arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        if arr.ndim != 2 or arr.shape[1] == 0:
            raise EvaluationInputError(
                f"source {key}: features must be a 2-D (rows, dim) array, got shape {arr.shape}"
            )
        if not np.issubdtype(arr.dtype, np.floating):
            if not np.issubdtype(arr.dtype, np.number):
                raise EvaluationInputError(f"source {key}: features must be numeric, got dtype {arr.dtype}")
            arr = arr.astype(np.float32)
        bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
        if len(bad):
            raise EvaluationInputError(f"source {key}: features contain NaN or inf in {_rows_text(bad)}")
        if metric == "cosine":
            zero = np.flatnonzero(~np.any(arr != 0, axis=1))
            if len(zero):
                raise EvaluationInputError(
                    f"source {key}: zero-norm feature rows cannot be L2-normalised for metric cosine: {_rows_text(zero)}"
                )
        out[key] = arr
    return {k: out[k] for k in SOURCE_KEYS if k in out}


# ------------------------------------------------------------------------------------------ protocol tables
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
                f"source {self.key}, task {task}: grouping column {column} is empty in {_rows_text(empty)}"
            )
        return values

    def digest(self) -> str:
        """sha256 of everything the protocol reads (labels, splits, tasks, groups), whatever the input form."""
        h = hashlib.sha256(self.key.encode())
        for part in (self.labels, self.train, *self.tasks.values(), *self.groups.values()):
            h.update("\x1f".join(map(str, part.tolist())).encode())
        return h.hexdigest()


def task_rows(table: ProtocolTable, task: str) -> np.ndarray:
    """Row indices of a task's queries; an empty task is an error."""
    rows = np.flatnonzero(table.tasks[task])
    if not len(rows):
        raise EvaluationInputError(
            f"source {table.key} ({SOURCES[table.key].folder}), task {task}: no row is marked True ({table.origin})"
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
            f"source {key}, column {col}: values {values.iloc[bad[0]]!r}... are not booleans in {_rows_text(rows)} ({origin})"
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
        raise EvaluationInputError(f"{where}: empty `{label_col}` in Train/task {_rows_text(unlabeled)}")
    return ProtocolTable(key=key, origin=origin, labels=labels, train=train, tasks=tasks, groups=groups)


def _split_frame(df: pd.DataFrame, origin: str) -> dict[str, pd.DataFrame]:
    """A single table of several sources -> {key: rows in order}; ours has `source`, merged official `chunk`."""
    col = (
        "source"
        if "label" in df.columns and "source" in df.columns
        else "chunk"
        if "chunk" in df.columns
        else None
    )
    if col is None:
        raise EvaluationInputError(
            f"{origin}: a single table needs a `source` (our manifest) or `chunk` (official merged CSV) column"
        )
    out: dict[str, pd.DataFrame] = {}
    for name in pd.unique(df[col].astype(str)):
        part = df[df[col].astype(str) == name]
        if col == "source" and "zarr_row" in part.columns:
            part = part.sort_values("zarr_row", kind="stable")  # our feature order (manifest.source_rows)
        out[_key(name)] = part.reset_index(drop=True)
    return out


def _read_release(store: ReleaseStore) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    """Our release at any location: the manifest, checked against the digest ``release.json`` records."""
    from chammi_data.manifest import MANIFEST_PARQUET, read_manifest, read_release_json

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
    from chammi_data.official import read_official_metadata

    return {_key(k): df for k, df in read_official_metadata(root).items()}


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
        frames = {_key(k): v.reset_index(drop=True) for k, v in manifest.items()}
        prov, origin = {"kind": "dataframes"}, "manifest mapping"
    else:
        raise EvaluationInputError(
            f"unsupported manifest type {type(manifest).__name__}: give a path, a DataFrame or {{source: DataFrame}}"
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
