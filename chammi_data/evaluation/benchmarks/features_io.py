"""Features of a benchmark release on disk, and the checks that they belong to the rows they are scored on.

Layout (``chammi eval --benchmark NAME --checkpoint ...`` writes it; ``--features`` reads it)::

    FEATURES/features.npy     (N, D) float32: row i = row i of the benchmark's source in the release
    FEATURES/cell_ids.txt     N lines: the release cell id of each row (optional for features made elsewhere)
    FEATURES/embedding.json   benchmark, release and manifest sha256, model, bag-of-channels, sha256 of both
                              files

Reading (:func:`load_benchmark_features`) checks row alignment: with ``cell_ids.txt`` the rows are matched
to the release by id (reordered when the order differs; an id the release lacks, or a release row without
features, is an error); without it the scorer checks the count. With ``embedding.json`` the features must
come from the release being scored (same manifest sha256) and the files must be unchanged (same sha256):
otherwise the problems are returned and the caller refuses them unless forced.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from chammi_data.evaluation.benchmarks.base import BenchmarkInputError
from chammi_data.store.paths import file_sha256

FEATURES_FILE = "features.npy"
IDS_FILE = "cell_ids.txt"
EMBEDDING_JSON = "embedding.json"


def save_benchmark_features(
    out: str | Path, features: np.ndarray, cell_ids: list[str], info: Mapping[str, Any]
) -> Path:
    """Write ``features.npy``, ``cell_ids.txt`` and ``embedding.json`` (``info`` plus rows, dim and the
    files' sha256) into ``out``; returns ``out``."""
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    x = np.asarray(features)
    if x.ndim != 2 or len(x) != len(cell_ids):
        raise ValueError(f"features of shape {x.shape} do not match {len(cell_ids)} cell ids")
    np.save(root / FEATURES_FILE, x, allow_pickle=False)
    (root / IDS_FILE).write_text("".join(f"{c}\n" for c in cell_ids), encoding="utf-8")
    meta = {
        **dict(info),
        "rows": int(x.shape[0]),
        "dim": int(x.shape[1]),
        "files": {name: file_sha256(root / name) for name in (FEATURES_FILE, IDS_FILE)},
    }
    (root / EMBEDDING_JSON).write_text(json.dumps(meta, indent=2, default=str) + "\n", encoding="utf-8")
    return root


def features_path(path: str | Path) -> Path:
    """The ``.npy`` of ``--features``: the file itself, ``DIR/features.npy``, or a folder's only ``.npy``."""
    p = Path(path)
    if p.is_file():
        return p
    if not p.is_dir():
        raise FileNotFoundError(f"features {p} not found (a .npy file or a folder with {FEATURES_FILE})")
    if (p / FEATURES_FILE).is_file():
        return p / FEATURES_FILE
    found = sorted(p.glob("*.npy"))
    if len(found) != 1:
        names = ", ".join(f.name for f in found) or "none"
        raise FileNotFoundError(f"features folder {p} has no {FEATURES_FILE} (its .npy files: {names})")
    return found[0]


def load_benchmark_features(
    path: str | Path, rows: pd.DataFrame, identity: Mapping[str, Any], name: str
) -> tuple[np.ndarray, list[str]]:
    """(features row-aligned with ``rows``, problems) for benchmark ``name``.

    ``rows``: the benchmark's manifest rows in feature order; ``identity``: the scored release's
    {release, manifest_sha256}. Errors (:class:`BenchmarkInputError`): an unreadable or pickled ``.npy``, an
    id list that does not match the features or the release. Problems (returned, the caller decides):
    features embedded from another release, files changed since they were written.
    """
    npy = features_path(path)
    try:
        x = np.load(npy, allow_pickle=False)
    except ValueError as exc:
        raise BenchmarkInputError(f"{name}: {npy} is not a plain .npy array ({exc})") from None
    folder = npy.parent
    problems = _identity_problems(folder, npy, identity)
    ids_file = folder / IDS_FILE
    if ids_file.is_file():
        x = _align(x, ids_file.read_text(encoding="utf-8").split(), rows, name, ids_file)
    return x, problems


def _align(x: np.ndarray, ids: list[str], rows: pd.DataFrame, name: str, where: Path) -> np.ndarray:
    """``x`` reordered so row i belongs to ``rows`` row i, matched by cell id."""
    if len(ids) != len(x):
        raise BenchmarkInputError(f"{name}: {where} lists {len(ids)} cell ids for {len(x)} feature rows")
    want = rows["cell_id"].astype(str).tolist()
    if ids == want:
        return x
    position = {cid: i for i, cid in enumerate(ids)}
    if len(position) != len(ids):
        dup = next(c for c, n in Counter(ids).items() if n > 1)
        raise BenchmarkInputError(f"{name}: {where} lists cell id {dup} twice")
    missing = [c for c in want if c not in position]
    extra = sorted(set(ids) - set(want))
    if missing or extra:
        what = (
            f"{len(missing)} release row(s) have no features (first: {missing[0]})"
            if missing
            else f"{len(extra)} feature row(s) belong to no row of the release (first: {extra[0]})"
        )
        raise BenchmarkInputError(f"{name}: features do not match the release's rows: {what} ({where})")
    return x[np.array([position[c] for c in want])]


def _identity_problems(folder: Path, npy: Path, identity: Mapping[str, Any]) -> list[str]:
    info_path = folder / EMBEDDING_JSON
    if not info_path.is_file():
        return []
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        return [f"{info_path}: unreadable ({exc})"]
    problems = []
    want, got = info.get("manifest_sha256"), identity.get("manifest_sha256")
    if want and got and want != got:
        problems.append(
            f"{info_path}: the features were embedded from release {info.get('release')} (manifest sha256 "
            f"{str(want)[:16]}...), not from the release being scored ({str(got)[:16]}...)"
        )
    for fname, digest in (info.get("files") or {}).items():
        f = folder / fname
        if f.is_file() and file_sha256(f) != digest:
            problems.append(f"{f}: changed since it was written (sha256 differs from {EMBEDDING_JSON})")
    return problems


def embedding_info(path: str | Path) -> dict[str, Any]:
    """The ``embedding.json`` beside the features of ``path`` ({} when there is none or it is unreadable)."""
    try:
        info_path = features_path(path).parent / EMBEDDING_JSON
        return json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}
