"""CHAMMI: the original benchmark, scored by :func:`chammi_data.evaluation.scoring.evaluate` (same numbers).

Scorer contract (the one benchmark whose features are per source): ``score(features, table, **options)``
with ``features`` = {source: (N_source, D) float} (keys ``wtc11|hpa|cp`` or ``Allen|HPA|CP``; row i = the
i-th manifest row of that source) and ``table`` = anything :func:`~chammi_data.evaluation.scoring.evaluate`
accepts as its manifest: a release folder, an official root, a manifest/metadata file, a DataFrame. The
protocol is exact 1-NN per task, macro-F1 over the classes of the task, CPS = W2/3 + (H2+H3)/6 +
(C2+C3+C4)/9 (headline ``cps``; NaN unless all six OOD tasks were scored). Options: ``metric`` (``cosine`` |
``l2``), ``classifier`` (``knn`` | ``sgd``), ``device``, ``progress``. No random choice with ``knn``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from chammi_data.evaluation.benchmarks.base import BenchmarkInputError, BenchmarkResult, library_versions
from chammi_data.evaluation.features import EvaluationInputError
from chammi_data.evaluation.scoring import evaluate

NAME = "chammi"
COLUMNS: tuple[str, ...] = ()  # the release's manifest, not a per-row table


def score(
    features: Mapping[str, Any],
    table: Any,
    *,
    metric: str = "cosine",
    classifier: str = "knn",
    device: str | None = None,
    progress: bool = False,
) -> BenchmarkResult:
    """``evaluate(features, table, metric, classifier)`` as a :class:`BenchmarkResult`."""
    if not isinstance(features, Mapping):
        raise BenchmarkInputError(
            f"{NAME}: features must be a dict {{source: (N, D) array}}, got {type(features).__name__}"
        )
    try:
        res = evaluate(
            features, table, metric=metric, classifier=classifier, device=device, progress=progress
        )
    except EvaluationInputError as exc:
        raise BenchmarkInputError(f"{NAME}: {exc}") from None
    metrics = {"cps": float("nan") if res.cps is None else float(res.cps)}
    for row in res.table.itertuples():
        metrics[f"{row.dataset}_{row.task}_f1"] = float(row.f1_score_macro)
        metrics[f"{row.dataset}_{row.task}_accuracy"] = float(row.accuracy)
    tasks = res.table.assign(name=res.table["dataset"] + "/" + res.table["task"])
    return BenchmarkResult(
        benchmark=NAME,
        headline="cps",
        metrics=metrics,
        groups={"tasks": tasks[["name", *res.table.columns]], "per_group": res.per_group},
        options={"metric": metric, "classifier": classifier},
        n={"rows": int(res.table["n_test"].sum()), "tasks": len(res.table)},
        versions=library_versions(),
        provenance=res.provenance,
        plot=("tasks", "name", "f1_score_macro"),
    )
