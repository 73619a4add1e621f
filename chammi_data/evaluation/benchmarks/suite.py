"""Score features of a benchmark's release: the data side of ``chammi eval --benchmark NAME --features F``.

:func:`score_release` takes features already in memory (row i = row i of the benchmark's source, see
:mod:`~chammi_data.evaluation.benchmarks.release_table`); :func:`score_features` reads them from disk first
(:mod:`~chammi_data.evaluation.benchmarks.features_io` for the five CHAMMI-75 benchmarks, the official
per-source layout for ``chammi``) and refuses features that belong to another release unless ``force``.
Both return the scorer's :class:`BenchmarkResult` with the release and the features in its provenance;
``write_result`` writes it.

Options derived from the features: CellPHIE features made with bag-of-channels (``embedding.json`` says so)
are scored with one PCA per channel slice (``channel_slices`` = the number of channels), as published,
unless the caller sets ``channel_slices``.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from chammi_data.errors import UserError
from chammi_data.evaluation.benchmarks.base import BenchmarkResult
from chammi_data.evaluation.benchmarks.features_io import embedding_info, load_benchmark_features
from chammi_data.evaluation.benchmarks.registry import get_benchmark
from chammi_data.evaluation.benchmarks.release_table import release_identity, release_rows, scorer_table
from chammi_data.store.storage import open_store


def score_release(
    name: str,
    features: Any,
    release: Any,
    options: Mapping[str, Any] | None = None,
    info: Mapping[str, Any] | None = None,
) -> BenchmarkResult:
    """Score ``features`` on benchmark ``name`` against the release at ``release`` (a location or store).

    ``features``: (N, D) row-aligned with the benchmark's rows, or for ``chammi`` {source: (N_s, D)}.
    ``options``: the scorer's options (unknown ones are an error listing the valid ones). ``info``: what is
    known about the features (``embedding.json``), recorded in the result and used for derived options.
    """
    bench = get_benchmark(name)
    store = open_store(release)
    opts = derived_options(bench.name, dict(options or {}), info or {}, features)
    if bench.name == "chammi":
        result = bench.score(features, store, **opts)
    else:
        rows = release_rows(store, bench.name)
        result = bench.score(features, scorer_table(rows, bench.name), **opts)
    result.provenance.update(release=release_identity(store), features=dict(info or {}))
    return result


def derived_options(
    name: str, options: dict[str, Any], info: Mapping[str, Any], features: Any
) -> dict[str, Any]:
    """``options`` plus those the features imply (CellPHIE bag-of-channels -> ``channel_slices``)."""
    if name == "cellphie" and "channel_slices" not in options and info.get("bag_of_channels"):
        channels = info.get("channels") or []
        width = np.asarray(features).shape[1] if np.ndim(features) == 2 else 0
        if channels and width % len(channels) == 0:
            options["channel_slices"] = len(channels)
    return options


def score_features(
    name: str,
    features: str | Path,
    release: Any,
    options: Mapping[str, Any] | None = None,
    force: bool = False,
) -> BenchmarkResult:
    """Read features from ``features`` (a folder or ``.npy``) and score them (:func:`score_release`).

    Features whose ``embedding.json`` names another release, or whose files changed since they were written,
    raise :class:`~chammi_data.errors.UserError` with the reasons; ``force`` scores them with a warning on
    stderr (recorded in the result's provenance).
    """
    bench = get_benchmark(name)
    store = open_store(release)
    feats: Any  # {source: array} for chammi, one array for the others
    if bench.name == "chammi":
        feats, problems, info = _chammi_features(features, store)
    else:
        rows = release_rows(store, bench.name)
        feats, problems = load_benchmark_features(features, rows, release_identity(store), bench.name)
        info = embedding_info(features)
    if problems and not force:
        raise UserError(" | ".join(problems) + " (pass --force to score them anyway)")
    for p in problems:
        print(f"chammi eval: warning: {p} (scored anyway: --force)", file=sys.stderr)
    result = score_release(bench.name, feats, store, options, info)
    result.provenance.update(features_path=str(features), identity_warnings=problems)
    return result


def _chammi_features(path: str | Path, store: Any) -> tuple[dict[str, np.ndarray], list[str], dict[str, Any]]:
    """The official per-source features layout of ``chammi embed``, with its identity checks."""
    import json

    from chammi_data.evaluation.features import EMBEDDING_JSON, identity_problems, load_features

    identity = {"kind": "release", "manifest_sha256": release_identity(store).get("manifest_sha256")}
    info_path = Path(path) / EMBEDDING_JSON
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
    return load_features(path), identity_problems(path, identity), info
