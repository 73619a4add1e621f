"""A benchmark's release -> the scorer's table, and what the protocol asks of the images before a model.

A benchmark adapter (``chammi-build --source rbc_mc|idr0017|cellphie|jumpcp|hpav23``) writes one release
source named after itself (:attr:`Benchmark.source`); each row's ``meta`` carries the columns its scorer
reads. :func:`release_rows` returns that source's manifest rows in feature order (row i = features[i] = zarr
row i) and :func:`scorer_table` their ``meta`` as the scorer's table, so features embedded from the release
and the table line up by construction.

:data:`PROTOCOL_CROP`: a centre crop the published protocol applies to each image before the model's own
resize (JUMP-CP: the 160 px crops are centre-cropped to 128, ``sc_dataset.fold_channels``).
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from chammi_data.evaluation.benchmarks.base import BenchmarkInputError
from chammi_data.evaluation.benchmarks.registry import get_benchmark
from chammi_data.format.manifest import read_manifest
from chammi_data.store.storage import ReleaseStore, open_store

#: benchmark -> (H, W) centre crop applied before the model's resize (the published protocol's)
PROTOCOL_CROP: dict[str, tuple[int, int]] = {"jumpcp": (128, 128)}


def benchmark_source(name: str) -> str:
    """The release source (= build source) of benchmark ``name``; ``KeyError`` for an unknown name, and a
    ``ValueError`` for ``chammi``, whose release is CHAMMI's three sources."""
    bench = get_benchmark(name)
    if bench.name == "chammi":
        raise ValueError("the chammi benchmark is scored on a CHAMMI release (sources wtc11, hpa, cp)")
    return bench.source


def release_rows(release: Any, name: str) -> pd.DataFrame:
    """The manifest rows of benchmark ``name``'s source in feature order (index reset).

    ``release``: a location or a :class:`ReleaseStore`. Raises :class:`BenchmarkInputError` when the release
    holds no row of that source (it names the sources it does hold and the command that builds the right one).
    """
    store = open_store(release)
    source = benchmark_source(name)
    manifest = read_manifest(store)
    rows = manifest[manifest["source"] == source].sort_values("zarr_row", kind="stable")
    if rows.empty:
        have = ", ".join(sorted(set(manifest["source"]))) or "none"
        raise BenchmarkInputError(
            f"{name}: release {store} holds no {source} rows (its sources: {have}); build the benchmark's "
            f"release with chammi-build --source {source} --input <its test data>"
        )
    return rows.reset_index(drop=True)


def scorer_table(rows: pd.DataFrame, name: str) -> pd.DataFrame:
    """The ``meta`` of ``rows`` as a table (row i <-> rows row i), checked to hold the scorer's columns."""
    bench = get_benchmark(name)
    table = pd.DataFrame([json.loads(m) if m else {} for m in rows["meta"]])
    missing = [c for c in bench.columns if c not in table.columns]
    if missing:
        raise BenchmarkInputError(
            f"{name}: the release's rows lack column(s) {', '.join(missing)} in their meta; was it built by "
            f"chammi-build --source {bench.source}?"
        )
    return table


def release_identity(release: Any) -> dict[str, Any]:
    """{release, manifest_sha256} of a release, what features embedded from it record."""
    from chammi_data.format.manifest import read_release_json

    store = release if isinstance(release, ReleaseStore) else open_store(release)
    return {"release": store.url, "manifest_sha256": read_release_json(store).get("manifest_sha256")}
