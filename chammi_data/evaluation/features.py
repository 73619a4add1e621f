"""The evaluator's inputs on the feature side: feature files on disk and the checks they must pass.

Layout (as users of the official evaluator have it, and as ``chammi embed`` writes it):
``FEATURES/<Allen|HPA|CP>/<name>.npy`` (our keys ``wtc11|hpa|cp`` are accepted as folder names too), one
(N_source, D) float matrix per source, row i = row i of that source's metadata. Every failure raises
:class:`EvaluationInputError` naming the source, file and rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from chammi_data.format.vocab import SOURCE_KEYS, SOURCES, source_info


class EvaluationInputError(ValueError):
    """Features or manifest do not satisfy the protocol; the message names source, task, column and rows."""


def rows_text(rows: np.ndarray, limit: int = 8) -> str:
    shown = ", ".join(str(int(r)) for r in rows[:limit])
    return f"{len(rows)} row(s): {shown}{', ...' if len(rows) > limit else ''}"


def source_key(name: str) -> str:
    try:
        return source_info(str(name)).key
    except KeyError as exc:
        raise EvaluationInputError(str(exc.args[0])) from None


def load_features(directory: str | Path, feature_file: str | None = None) -> dict[str, np.ndarray]:
    """{source key: (N, D) array} from ``directory/<Allen|HPA|CP|wtc11|hpa|cp>/*.npy``.

    With several ``.npy`` in a folder, ``feature_file`` (name with or without ``.npy``) picks one; without it
    that is an error listing them. Folders of other names are ignored; two folders for one source are an
    error.
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
                    f"{sub} holds several feature files {[p.name for p in files]}: pick one with "
                    "--feature-file NAME"
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
    """{source key: float (N, D) numpy array}, checked: known source, 2-D, finite, non-zero rows for
    cosine."""
    if not isinstance(features, Mapping) or not features:
        raise EvaluationInputError("features must be a non-empty {source: (N, D) array} mapping")
    out: dict[str, np.ndarray] = {}
    for name, value in features.items():
        key = source_key(name)
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
            raise EvaluationInputError(f"source {key}: features contain NaN or inf in {rows_text(bad)}")
        if metric == "cosine":
            zero = np.flatnonzero(~np.any(arr != 0, axis=1))
            if len(zero):
                raise EvaluationInputError(
                    f"source {key}: zero-norm feature rows cannot be L2-normalised for metric cosine: "
                    f"{rows_text(zero)}"
                )
        out[key] = arr
    return {k: out[k] for k in SOURCE_KEYS if k in out}


#: ``chammi embed`` writes this beside the feature folders: where the features came from.
EMBEDDING_JSON = "embedding.json"


def feature_file_digests(paths: Mapping[str, Path]) -> dict[str, str]:
    """{official folder name: sha256 of the .npy file} for the files of :func:`save_features`."""
    from chammi_data.store.paths import file_sha256

    return {SOURCES[source_key(k)].folder: file_sha256(p) for k, p in paths.items()}


def identity_problems(
    directory: str | Path, provenance: Mapping[str, Any], feature_file: str | None = None
) -> list[str]:
    """Why features in ``directory`` may not belong to the release being scored (empty: nothing found).

    Uses the ``embedding.json`` that ``chammi embed`` writes: the manifest sha256 of the release the features
    were computed on must equal the scored release's (``provenance`` of ``load_protocol_tables``), and each
    ``.npy`` must still have the sha256 recorded when it was written (rows permuted or replaced afterwards
    change it). Features without ``embedding.json`` (made elsewhere) cannot be checked: returns [].
    """
    import json

    from chammi_data.store.paths import file_sha256

    path = Path(directory) / EMBEDDING_JSON
    if not path.is_file():
        return []
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        return [f"{path}: unreadable ({exc})"]
    problems = []
    want, got = info.get("manifest_sha256"), provenance.get("manifest_sha256")
    if provenance.get("kind") == "release" and want and got and want != got:
        problems.append(
            f"{path}: the features were embedded from release {info.get('release_dir')} (manifest sha256 "
            f"{want[:16]}...), not from the release being scored (manifest sha256 {got[:16]}...)"
        )
    name = info.get("features_name") if feature_file is None else feature_file.removesuffix(".npy")
    for folder, digest in (info.get("files") or {}).items():
        npy = Path(directory) / folder / f"{name}.npy"
        if npy.is_file() and file_sha256(npy) != digest:
            problems.append(
                f"{npy}: changed since chammi embed wrote it (sha256 differs from {EMBEDDING_JSON}): "
                f"rows permuted, replaced or edited"
            )
    return problems
