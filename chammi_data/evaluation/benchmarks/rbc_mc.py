"""RBC-MC: red-blood-cell morphology classified across two sites (imaging flow cytometry, bright field).

Scorer contract: ``score(features, table, **options) -> BenchmarkResult`` with ``features`` (N, D) float, one
row per image, and ``table`` of N rows (row i <-> features[i]) with the columns

- ``site``: ``Swiss`` | ``Canadian`` (the top folder of the test layout);
- ``label``: the class (parent folder name), one of :data:`CLASSES`. ``Undecidable`` is refused: the
  protocol excludes it and the adapter drops it (and lists it in its build report).

Protocol (issue 20): cross-site, train on Canadian and test on Swiss, then the reverse; scikit-learn
``LogisticRegression(solver="lbfgs", C=1, max_iter=1000, random_state=seed)`` on the raw features (no
scaling); **NaN feature values are set to 0** (the published protocol does; the only benchmark that accepts
NaN, inf is still refused). Metrics: accuracy per direction and their mean (headline ``mean_accuracy``), also
balanced accuracy and macro-F1; per-direction, per-class recall in ``groups["classes"]``. Every class must
have samples at both sites.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, recall_score

from chammi_data.evaluation.benchmarks.base import (
    BenchmarkInputError,
    BenchmarkResult,
    check_features,
    check_values,
    library_versions,
    require_columns,
    text_column,
)

NAME = "rbc-mc"
COLUMNS = ("site", "label")
SITES = ("Canadian", "Swiss")
CLASSES = (
    "CrenatedDisc",
    "CrenatedDiscoid",
    "CrenatedSphere",
    "CrenatedSpheroid",
    "Side",
    "SmoothDisc",
    "SmoothSphere",
)
EXCLUDED = "Undecidable"
#: (train site, test site) in the published order.
DIRECTIONS = (("Canadian", "Swiss"), ("Swiss", "Canadian"))


def score(
    features: Any,
    table: pd.DataFrame,
    *,
    seed: int = 42,
    C: float = 1.0,  # noqa: N803 - scikit-learn's name for the inverse regularisation strength
    max_iter: int = 1000,
) -> BenchmarkResult:
    """Cross-site logistic regression accuracy (see the module docstring)."""
    x = check_features(features, table, NAME, allow_nan=True)
    require_columns(table, COLUMNS, NAME)
    site, label = text_column(table, "site"), text_column(table, "label")
    check_values(site, SITES, "site", NAME)
    undecidable = np.flatnonzero(label == EXCLUDED)
    if len(undecidable):
        raise BenchmarkInputError(
            f"{NAME}: row {int(undecidable[0])} has label {EXCLUDED}; the protocol excludes it, drop those "
            f"{len(undecidable)} row(s) before scoring"
        )
    check_values(label, CLASSES, "label", NAME)
    for s in SITES:
        have = set(label[site == s])
        missing = [c for c in CLASSES if c not in have]
        if missing:
            raise BenchmarkInputError(f"{NAME}: site {s} has no sample of class(es) {', '.join(missing)}")
    n_nan = int(np.isnan(x).any(axis=1).sum())
    if n_nan:
        x = np.nan_to_num(x, nan=0.0)  # the published protocol's handling of NaN embeddings
    metrics: dict[str, float] = {}
    per_class = []
    for train, test in DIRECTIONS:
        tr, te = site == train, site == test
        clf = LogisticRegression(C=C, max_iter=max_iter, solver="lbfgs", random_state=seed)
        clf.fit(x[tr], label[tr])
        pred = clf.predict(x[te])
        tag = f"{train.lower()}_to_{test.lower()}"
        metrics[f"accuracy_{tag}"] = float(accuracy_score(label[te], pred))
        metrics[f"balanced_accuracy_{tag}"] = float(balanced_accuracy_score(label[te], pred))
        metrics[f"macro_f1_{tag}"] = float(f1_score(label[te], pred, labels=list(CLASSES), average="macro"))
        recall = recall_score(label[te], pred, labels=list(CLASSES), average=None)
        counts = pd.Series(label[te]).value_counts()
        per_class += [
            {"direction": f"{train}->{test}", "class": c, "recall": float(r), "n_test": int(counts.get(c, 0))}
            for c, r in zip(CLASSES, recall, strict=True)
        ]
    metrics["mean_accuracy"] = float(
        np.mean([metrics[f"accuracy_{a.lower()}_to_{b.lower()}"] for a, b in DIRECTIONS])
    )
    directions = pd.DataFrame(
        [
            {
                "direction": f"{a}->{b}",
                "accuracy": metrics[f"accuracy_{a.lower()}_to_{b.lower()}"],
                "n_train": int((site == a).sum()),
                "n_test": int((site == b).sum()),
            }
            for a, b in DIRECTIONS
        ]
    )
    return BenchmarkResult(
        benchmark=NAME,
        headline="mean_accuracy",
        metrics=metrics,
        groups={"directions": directions, "classes": pd.DataFrame(per_class)},
        options={"seed": seed, "C": C, "max_iter": max_iter, "solver": "lbfgs", "nan_to": 0.0},
        n={"rows": len(table), **{s: int((site == s).sum()) for s in SITES}, "rows_with_nan_set_to_0": n_nan},
        versions=library_versions(),
        plot=("directions", "direction", "accuracy"),
    )
