"""The CHAMMI-75 benchmark scorers: pure, strict functions of (features, table) -> :class:`BenchmarkResult`.

    from chammi_data.evaluation.benchmarks import score, write_result
    result = score("rbc-mc", features, table)        # features (N, D), table: N rows (site, label)
    write_result(result, "out/rbc-mc")              # results.json, results.csv, rbc-mc.png

Names: ``chammi``, ``rbc-mc``, ``idr0017``, ``cellphie``, ``jumpcp``, ``hpav23`` (:func:`list_benchmarks`);
each module's docstring states its table columns, options and protocol.
"""

from __future__ import annotations

from typing import Any

from chammi_data.evaluation.benchmarks.base import BenchmarkInputError, BenchmarkResult, write_result
from chammi_data.evaluation.benchmarks.registry import Benchmark, get_benchmark, list_benchmarks

__all__ = [
    "Benchmark",
    "BenchmarkInputError",
    "BenchmarkResult",
    "get_benchmark",
    "list_benchmarks",
    "score",
    "write_result",
]


def score(name: str, features: Any, table: Any, **options: Any) -> BenchmarkResult:
    """Score ``features`` on benchmark ``name`` (see :func:`get_benchmark`); unknown options are an error."""
    return get_benchmark(name).score(features, table, **options)
