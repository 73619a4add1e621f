"""The CHAMMI benchmark protocol as one pure, strict function: features + manifest -> scores and CPS.

Protocol (as the official evaluator): reference = all ``Train`` rows of a source; query = rows whose task
column is true; exact 1-NN (``cosine`` on L2-normalised rows or ``l2`` on raw rows; ties -> lowest reference
index) or the official ``sgd`` alternative; macro-F1 over the classes present in the task's ground truth, plus
accuracy. Leave-one-group-out tasks (``vocab.LOGO_TASKS``): for each group g, reference = Train rows then the
task's rows of every other group (both in manifest order: this concatenated order is the one ties are broken
by), query = the task's rows of g; predictions of all groups are pooled and scored once, and per-group scores
are reported beside the pooled one. CPS = W2/3 + (H2+H3)/6 + (C2+C3+C4)/9.

Checking features lives in :mod:`chammi_data.evaluation.features`, reading manifests in
:mod:`chammi_data.evaluation.protocol`, the search in :mod:`chammi_data.evaluation.knn`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import SGDClassifier

from chammi_data.evaluation.features import EvaluationInputError, check_features
from chammi_data.evaluation.knn import DEFAULT_BLOCK_SIZE, METRICS, NearestNeighborIndex
from chammi_data.evaluation.protocol import ProtocolTable, load_protocol_tables, task_rows
from chammi_data.format.vocab import CPS_WEIGHTS, LOGO_TASKS, SOURCE_KEYS, SOURCES, source_info
from chammi_data.progress import progress as progress_bar

CLASSIFIERS: tuple[str, ...] = ("knn", "sgd")
#: Columns of ``EvalResult.table``; the official results.csv keeps :data:`OFFICIAL_COLUMNS`.
TABLE_COLUMNS = ("dataset", "task", "classifier", "metric", "accuracy", "f1_score_macro", "n_test")
OFFICIAL_COLUMNS = ("dataset", "task", "classifier", "accuracy", "f1_score_macro")
PER_GROUP_COLUMNS = ("dataset", "task", "group_column", "group", "accuracy", "f1_score_macro", "n_test")

__all__ = ["CLASSIFIERS", "EvalResult", "EvaluationInputError", "compute_cps", "evaluate", "score"]


@dataclass
class EvalResult:
    """Scores of one feature set. ``table``: one row per task (:data:`TABLE_COLUMNS`); ``per_group``: LOGO
    tasks per group (:data:`PER_GROUP_COLUMNS`); ``cps``: None unless all six OOD tasks were scored;
    ``predictions``: {(dataset, task): (n_test,) predicted labels in query order} (not serialised)."""

    table: pd.DataFrame
    per_group: pd.DataFrame
    cps: float | None
    metric: str
    classifier: str
    provenance: dict[str, Any] = field(default_factory=dict)
    predictions: dict[tuple[str, str], np.ndarray] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "classifier": self.classifier,
            "cps": self.cps,
            "cps_formula": "W2/3 + (H2+H3)/6 + (C2+C3+C4)/9 (macro-F1)",
            "table": self.table.to_dict(orient="records"),
            "per_group": self.per_group.to_dict(orient="records"),
            "provenance": self.provenance,
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, default=_json_default)

    def official_table(self) -> pd.DataFrame:
        """The table with the official results.csv columns only."""
        return self.table.loc[:, list(OFFICIAL_COLUMNS)]


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def score(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float]:
    """(accuracy, macro-F1 over the classes present in ``y_true``).

    Equals ``sklearn.metrics.f1_score(y_true, y_pred, labels=unique(y_true), average="macro",
    zero_division=0)`` (checked in the tests), computed directly to avoid its per-call overhead. A predicted
    class absent from the ground truth lowers the recall of the true class but is not averaged in; a present
    class that is never predicted has precision 0/0 -> F1 0.
    """
    y_true = np.asarray(y_true).astype(str)
    y_pred = np.asarray(y_pred).astype(str)
    if len(y_true) != len(y_pred) or not len(y_true):
        raise ValueError(
            f"score needs equally long non-empty label arrays, got {len(y_true)} and {len(y_pred)}"
        )
    labels, t = np.unique(y_true, return_inverse=True)
    hit = y_true == y_pred
    tp = np.bincount(t[hit], minlength=len(labels)).astype(np.float64)
    support = np.bincount(t, minlength=len(labels))
    # Predictions counted per ground-truth class; predictions of absent classes fall out here.
    pos = np.searchsorted(labels, y_pred)
    present = (pos < len(labels)) & (labels[np.minimum(pos, len(labels) - 1)] == y_pred)
    predicted = np.bincount(pos[present], minlength=len(labels))
    # F1 = 2 TP / (support + predicted); the denominator is > 0 because every class has support.
    f1 = 2 * tp / (support + predicted)
    return float(hit.mean()), float(f1.mean())


def compute_cps(table: pd.DataFrame) -> float | None:
    """CHAMMI Performance Score from a results table (``dataset`` as folder or key, ``task``,
    ``f1_score_macro``); None when any of the six OOD tasks is missing."""
    f1 = {(source_info(str(r.dataset)).key, str(r.task)): float(r.f1_score_macro) for r in table.itertuples()}
    if any(k not in f1 for k in CPS_WEIGHTS):
        return None
    return float(sum(w * f1[k] for k, w in CPS_WEIGHTS.items()))


class _Scorer:
    """Fits / searches one source; keeps the Train reference so every task reuses it."""

    def __init__(
        self,
        feats: np.ndarray,
        table: ProtocolTable,
        metric: str,
        classifier: str,
        block_size: int,
        device: str | torch.device | None,
        progress: bool = False,
    ) -> None:
        self.progress = progress
        self.feats, self.table, self.metric, self.classifier = feats, table, metric, classifier
        self.block_size, self.device = block_size, device
        self.train = np.flatnonzero(table.train)
        self._index: NearestNeighborIndex | None = None
        self._sgd: SGDClassifier | None = None

    def _sgd_features(self, rows: np.ndarray) -> np.ndarray:
        x = self.feats[rows].astype(np.float64)
        # cosine -> the same L2-normalised rows the 1-NN sees; l2 -> raw features (no standardisation).
        return x / np.linalg.norm(x, axis=1, keepdims=True) if self.metric == "cosine" else x

    def _fit_sgd(self, rows: np.ndarray) -> SGDClassifier:
        clf = SGDClassifier(alpha=0.001, max_iter=100, random_state=0)
        return clf.fit(self._sgd_features(rows), self.table.labels[rows])

    def predict(self, queries: np.ndarray) -> np.ndarray:
        """Labels predicted for query rows from the Train reference."""
        if self.classifier == "sgd":
            if self._sgd is None:
                self._sgd = self._fit_sgd(self.train)
            return self._sgd.predict(self._sgd_features(queries))
        if self._index is None:
            self._index = NearestNeighborIndex(self.feats[self.train], self.metric, device=self.device)
        nn = self._index.search(
            self.feats[queries], block_size=self.block_size, progress=self.progress and len(queries) > 20000
        )
        return self.table.labels[self.train][nn]

    def predict_logo(self, queries: np.ndarray, groups: np.ndarray) -> np.ndarray:
        """Leave-one-group-out labels for task rows ``queries`` with integer group codes ``groups``."""
        if self.classifier == "sgd":
            pred = np.empty(len(queries), dtype=object)
            for g in progress_bar(
                np.unique(groups), desc="sgd leave-one-group-out", leave=False, disable=not self.progress
            ):
                ref = np.concatenate([self.train, queries[groups != g]])
                pred[groups == g] = self._fit_sgd(ref).predict(self._sgd_features(queries[groups == g]))
            return pred.astype(str)
        # One search over [Train ; task rows]: query-vs-Train and query-vs-task rows come from the same
        # product, and the query's own group is masked out, which equals one search per group with the same
        # order.
        ref = np.concatenate([self.train, queries])
        ref_groups = np.concatenate([np.full(len(self.train), -1, dtype=np.int64), groups])
        index = NearestNeighborIndex(self.feats[ref], self.metric, device=self.device)
        nn = index.search(
            self.feats[queries],
            query_groups=groups,
            reference_groups=ref_groups,
            block_size=self.block_size,
            progress=self.progress and len(queries) > 20000,
        )
        return self.table.labels[ref][nn]


def evaluate(
    features: Mapping[str, Any],
    manifest: Any,
    metric: str = "cosine",
    classifier: str = "knn",
    block_size: int = DEFAULT_BLOCK_SIZE,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> EvalResult:
    """Score features with the CHAMMI protocol.

    Args:
        features: {source: (N_source, D) float array or tensor}, keys ``wtc11|hpa|cp`` or ``Allen|HPA|CP``;
            row i = row i of that source's manifest rows. Sources may be a subset (then ``cps`` is None).
        manifest: a release folder (``manifest.parquet``), an official root
        (``Allen|HPA|CP/enriched_meta.csv``),
            a path to a manifest/metadata file, a DataFrame (our manifest: ``label``/``source`` columns, or an
            official merged CSV with ``chunk``), or {source: DataFrame} with official columns (``Label``...).
        metric: ``cosine`` (default; the paper's models) or ``l2`` (the official evaluator's default).
        classifier: ``knn`` (exact 1-NN) or ``sgd`` (SGDClassifier(alpha=0.001, max_iter=100,
        random_state=0)). block_size: maximum similarity entries held at once by the 1-NN search. device:
        torch device for the 1-NN products (None: cuda if available, else cpu).

    Raises:
        EvaluationInputError: one clear message per failure (row counts, NaN/inf, zero-norm rows under
            cosine, missing task/grouping/label column, empty task, unknown source), naming source/task/rows.
    """
    if metric not in METRICS:
        raise EvaluationInputError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")
    if classifier not in CLASSIFIERS:
        raise EvaluationInputError(f"unknown classifier {classifier!r}; valid: {', '.join(CLASSIFIERS)}")
    feats = check_features(features, metric)
    tables, provenance = load_protocol_tables(manifest, sources=list(feats))
    rows: list[dict[str, Any]] = []
    per_group: list[dict[str, Any]] = []
    predictions: dict[tuple[str, str], np.ndarray] = {}
    scorers: dict[str, _Scorer] = {}  # one per source: the Train reference is prepared once per source
    jobs = [(k, t) for k in SOURCE_KEYS if k in feats for t in SOURCES[k].tasks]
    # Every input check runs before any computation: a bad source fails fast, never after minutes of work.
    for key in feats:
        if len(feats[key]) != len(tables[key]):
            raise EvaluationInputError(
                f"source {key} ({SOURCES[key].folder}): features have {len(feats[key])} rows but the "
                "manifest has "
                f"{len(tables[key])} rows for this source ({tables[key].origin})"
            )
    queries_of = {(k, t): task_rows(tables[k], t) for k, t in jobs}
    groups_of = {
        (k, t): tables[k].group(LOGO_TASKS[(k, t)], t, queries_of[(k, t)])
        for k, t in jobs
        if (k, t) in LOGO_TASKS
    }
    for key, task in progress_bar(jobs, desc=f"evaluate ({classifier}, {metric})", disable=not progress):
        table, folder = tables[key], SOURCES[key].folder
        if key not in scorers:
            scorers[key] = _Scorer(feats[key], table, metric, classifier, block_size, device, progress)
        scorer = scorers[key]
        queries = queries_of[(key, task)]
        y_true = table.labels[queries]
        if (key, task) in LOGO_TASKS:
            column = LOGO_TASKS[(key, task)]
            names, codes = np.unique(groups_of[(key, task)], return_inverse=True)
            y_pred = scorer.predict_logo(queries, codes.astype(np.int64))
            for g, name in enumerate(names):
                sel = codes == g
                acc, f1 = score(y_true[sel], y_pred[sel])
                per_group.append(
                    dict(
                        zip(
                            PER_GROUP_COLUMNS,
                            (folder, task, column, str(name), acc, f1, int(sel.sum())),
                            strict=True,
                        )
                    )
                )
        else:
            y_pred = scorer.predict(queries)
        acc, f1 = score(y_true, y_pred)
        predictions[(folder, task)] = np.asarray(y_pred).astype(str)
        rows.append(
            dict(zip(TABLE_COLUMNS, (folder, task, classifier, metric, acc, f1, len(queries)), strict=True))
        )
    out = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    provenance.update(
        metric=metric,
        classifier=classifier,
        dims={SOURCES[k].folder: int(v.shape[1]) for k, v in feats.items()},
    )
    return EvalResult(
        table=out,
        per_group=pd.DataFrame(per_group, columns=list(PER_GROUP_COLUMNS)),
        cps=compute_cps(out),
        metric=metric,
        classifier=classifier,
        provenance=provenance,
        predictions=predictions,
    )
