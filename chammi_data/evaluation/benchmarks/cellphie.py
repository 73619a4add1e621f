"""CellPHIE: pooled genetic screen of 14-channel single cells; each gene's knock-out vs non-targeting guides.

Scorer contract: ``score(features, table, **options) -> BenchmarkResult`` with ``features`` (N, D) float, one
row per cell (a bag-of-channels embedding is the concatenation of 14 per-channel embeddings), and ``table``
of N rows (row i <-> features[i]) with the columns ``gene`` (``non-target`` for the controls), ``time``
(e.g. ``D28``), ``train`` (bool: the pickle's own split), ``umi``, ``media``, ``sample`` (carried, not
used by the protocol).

Protocol (issue 20): keep ``time == "D28"``; drop genes ``DGKE`` and ``GAS7``. PCA fitted on the training
cells: with ``channel_slices=k`` the features are k equal slices (one per channel) and each gets its own
PCA of ``slice_components`` (20) components, concatenated; without it one PCA on the whole vector with
``pca_components`` (None: all, a rotation). Then ``StandardScaler`` (fitted on train) and, per gene, binary
target vs ``non-target``: ``LogisticRegression(solver="saga", class_weight="balanced", max_iter=1000)`` and
``RandomForestClassifier(100 trees, max_depth=25, class_weight="balanced")``, both ``random_state=seed``.
A gene with fewer than ``min_test_targets`` (5) test cells is skipped (listed in ``groups``). Precision,
recall, F1 (target = positive) and ROC AUC per gene, averaged over genes; headline ``lr_f1``.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
from sklearn.decomposition import PCA
from sklearn.ensemble import RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import precision_recall_fscore_support, roc_auc_score
from sklearn.preprocessing import StandardScaler

from chammi_data.evaluation.benchmarks.base import (
    BenchmarkInputError,
    BenchmarkResult,
    bool_column,
    check_features,
    library_versions,
    require_columns,
    text_column,
)

NAME = "cellphie"
COLUMNS = ("gene", "time", "train", "umi", "media", "sample")
CONTROL = "non-target"
MODELS = ("lr", "rf")
SCORES = ("precision", "recall", "f1", "auc")


def score(
    features: Any,
    table: pd.DataFrame,
    *,
    time: str = "D28",
    drop_genes: tuple[str, ...] = ("DGKE", "GAS7"),
    channel_slices: int | None = None,
    slice_components: int = 20,
    pca_components: int | None = None,
    min_test_targets: int = 5,
    seed: int = 42,
    rf_trees: int = 100,
    rf_max_depth: int = 25,
    lr_max_iter: int = 1000,
    n_jobs: int | None = -1,
) -> BenchmarkResult:
    """Per-gene binary classification of knock-out vs non-target cells (see the module docstring)."""
    x = check_features(features, table, NAME)
    require_columns(table, COLUMNS, NAME)
    is_train = bool_column(table, "train", NAME)
    gene, when = text_column(table, "gene"), text_column(table, "time")
    keep = (when == time) & ~np.isin(gene, list(drop_genes))
    if not keep.any():
        raise BenchmarkInputError(
            f"{NAME}: no row has time {time!r} (times present: {', '.join(sorted(set(when)))})"
        )
    for split, mask in (("train", is_train), ("test", ~is_train)):
        if not (keep & mask & (gene == CONTROL)).any():
            raise BenchmarkInputError(f"{NAME}: the {split} split at time {time} has no {CONTROL} cell")
    if channel_slices is not None and x.shape[1] % channel_slices:
        raise BenchmarkInputError(
            f"{NAME}: features of length {x.shape[1]} do not split into {channel_slices} equal channel slices"
        )
    x, gene, is_train = x[keep], gene[keep], is_train[keep]
    z_train, z_test = _reduce(
        x[is_train], x[~is_train], channel_slices, slice_components, pca_components, seed
    )
    g_train, g_test = gene[is_train], gene[~is_train]
    rows = []
    for g in sorted(set(gene) - {CONTROL}):
        n_test = int((g_test == g).sum())
        n_train = int((g_train == g).sum())
        row: dict[str, Any] = {
            "gene": g,
            "n_train": n_train,
            "n_test": n_test,
            "n_test_control": int((g_test == CONTROL).sum()),
            "scored": False,
        }
        if n_test >= min_test_targets and n_train > 0:
            tr, te = np.isin(g_train, [g, CONTROL]), np.isin(g_test, [g, CONTROL])
            y_tr, y_te = g_train[tr] == g, g_test[te] == g
            for model in MODELS:
                clf = _model(model, seed, rf_trees, rf_max_depth, lr_max_iter, n_jobs)
                with warnings.catch_warnings():
                    # saga may stop at max_iter as published; the iterations used are reported instead.
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    clf.fit(z_train[tr], y_tr)
                if model == "lr":
                    row["lr_iterations"] = int(clf.n_iter_[0])
                prob = clf.predict_proba(z_test[te])[:, list(clf.classes_).index(True)]
                pred = clf.predict(z_test[te])
                p, r, f, _ = precision_recall_fscore_support(y_te, pred, average="binary", zero_division=0)
                row.update(
                    {
                        f"{model}_precision": p,
                        f"{model}_recall": r,
                        f"{model}_f1": f,
                        f"{model}_auc": roc_auc_score(y_te, prob),
                    }
                )
            row["scored"] = True
        rows.append(row)
    genes = pd.DataFrame(rows)
    scored = genes[genes["scored"]]
    if scored.empty:
        raise BenchmarkInputError(
            f"{NAME}: no gene has >= {min_test_targets} test cells and training cells; nothing to score"
        )
    metrics = {f"{m}_{s}": float(scored[f"{m}_{s}"].mean()) for m in MODELS for s in SCORES}
    return BenchmarkResult(
        benchmark=NAME,
        headline="lr_f1",
        metrics=metrics,
        groups={"genes": genes},
        options=dict(
            time=time,
            drop_genes=list(drop_genes),
            channel_slices=channel_slices,
            slice_components=slice_components,
            pca_components=pca_components,
            min_test_targets=min_test_targets,
            seed=seed,
            rf_trees=rf_trees,
            rf_max_depth=rf_max_depth,
            lr_max_iter=lr_max_iter,
        ),
        n={
            "rows": len(table),
            "rows_scored": int(keep.sum()),
            "train": int(is_train.sum()),
            "test": int((~is_train).sum()),
            "genes_scored": len(scored),
            "genes_skipped": len(genes) - len(scored),
        },
        versions=library_versions(),
        plot=("genes", "gene", "lr_f1") if "lr_f1" in genes else None,
    )


def _model(kind: str, seed: int, trees: int, depth: int, max_iter: int, n_jobs: int | None) -> Any:
    if kind == "lr":
        return LogisticRegression(
            solver="saga", class_weight="balanced", max_iter=max_iter, random_state=seed
        )
    return RandomForestClassifier(
        n_estimators=trees, max_depth=depth, class_weight="balanced", random_state=seed, n_jobs=n_jobs
    )


def _reduce(
    train: np.ndarray, test: np.ndarray, slices: int | None, per_slice: int, components: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """PCA (per channel slice or global) then StandardScaler, all fitted on ``train``."""
    if slices is None:
        parts = [(train, test, components)]
    else:
        width = train.shape[1] // slices
        parts = [
            (train[:, k * width : (k + 1) * width], test[:, k * width : (k + 1) * width], per_slice)
            for k in range(slices)
        ]
    out_tr, out_te = [], []
    for a, b, n in parts:
        n = min(n or a.shape[1], a.shape[1], len(a))
        pca = PCA(n_components=n, random_state=seed).fit(a)
        out_tr.append(pca.transform(a))
        out_te.append(pca.transform(b))
    scaler = StandardScaler().fit(np.hstack(out_tr))
    return scaler.transform(np.hstack(out_tr)), scaler.transform(np.hstack(out_te))
