"""Metric and transform code shared by the benchmark scorers; scikit-learn or scipy where they have it.

- ranking metrics: :func:`average_precision` and :func:`roc_auc` (scikit-learn), :func:`pr_auc` (trapezoid
  area under scikit-learn's precision-recall curve, as the IDR0017 benchmark reports "AUC-PR"),
  :func:`recall_at_k`;
- :func:`wasserstein` (``scipy.stats.wasserstein_distance``, 1-D);
- :func:`spherize`: ZCA-cor whitening fitted on control rows, numerically the same as pycytominer's
  ``Spherize(method="ZCA-cor", center=True, epsilon=...)`` (checked to 1e-6 on the JUMP-CP reference profiles
  in ``tests/chammi_data/test_benchmarks_jumpcp.py``); written here so the scorer works on plain arrays
  without pycytominer's DataFrame round trips and dependencies (SQLAlchemy, clevercsv, fire);
- :func:`whiten_on_controls`: IDR0017's ZCA whitening on control images (covariance over n, epsilon 1e-6).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.stats
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score


def average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """AP of ranking by ``scores`` (descending) with binary relevance ``y_true`` (scikit-learn)."""
    return float(average_precision_score(np.asarray(y_true, dtype=bool), np.asarray(scores, dtype=float)))


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (scikit-learn); needs both classes in ``y_true``."""
    return float(roc_auc_score(np.asarray(y_true, dtype=bool), np.asarray(scores, dtype=float)))


def pr_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Trapezoid area under the precision-recall curve (``sklearn.metrics.auc(recall, precision)``).

    This is what the IDR0017 benchmark calls AUC-PR; it differs slightly from :func:`average_precision`
    (step-wise sum), which is reported beside it.
    """
    precision, recall, _ = precision_recall_curve(np.asarray(y_true, dtype=bool), np.asarray(scores, float))
    return float(auc(recall, precision))


def recall_at_k(y_true: np.ndarray, scores: np.ndarray, k: int) -> float:
    """Share of all positives found among the ``k`` highest scores (ties: the lower index first)."""
    y = np.asarray(y_true, dtype=bool)
    if not y.any():
        return float("nan")
    top = np.argsort(-np.asarray(scores, dtype=float), kind="stable")[:k]
    return float(y[top].sum() / y.sum())


def wasserstein(u: np.ndarray, v: np.ndarray) -> float:
    """First Wasserstein distance between two 1-D samples (``scipy.stats.wasserstein_distance``)."""
    return float(scipy.stats.wasserstein_distance(u, v))


def spherize(x: np.ndarray, controls: np.ndarray, epsilon: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """ZCA-cor sphering of all rows of ``x`` (N, D), fitted on the rows ``controls`` (bool mask or indices).

    Fit: standardise the control rows (mean, population std), SVD of that matrix, singular values beyond
    the rank r filled with the r-th one when n <= D (as pycytominer does),
    W = V diag(sqrt(n - 1) / (s + eps)) V^T (pycytominer adds epsilon to the singular values).
    Transform: ``((x - mean) / std) @ W``.
    Returns (transformed (N, D) float64, (D,) bool mask of the features kept). Features constant over the
    controls cannot be standardised and are dropped (the mask says which); the caller records how many.
    """
    x = np.asarray(x, dtype=np.float64)
    ref = x[controls]
    mean = ref.mean(axis=0)
    std = ref.std(axis=0)
    keep = std > 0
    z = (ref[:, keep] - mean[keep]) / std[keep]
    n, d = z.shape
    _, s, vt = np.linalg.svd(z, full_matrices=True)
    if n <= d:
        r = np.linalg.matrix_rank(z)
        s = np.concatenate([s[:r], np.repeat(s[r - 1], d - r)])
    # pycytominer's scaling: eigenvalues of the covariance are s^2 / (n - 1), epsilon added to s.
    w = (vt.T * (np.sqrt(n - 1) / (s + epsilon))) @ vt
    return ((x[:, keep] - mean[keep]) / std[keep]) @ w, keep


def whiten_on_controls(controls: np.ndarray, epsilon: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """IDR0017's ZCA whitening fitted on control rows (n, D): (mean (D,), W (D, D)); apply (x - mean) @ W.

    C = X^T X / n of the centred controls, C = V diag(l) V^T, W = V diag(1/sqrt(l + eps)) V^T.
    """
    c = np.asarray(controls, dtype=np.float64)
    mean = c.mean(axis=0)
    xc = c - mean
    evals, evecs = scipy.linalg.eigh(xc.T @ xc / len(c))
    w = (evecs / np.sqrt(np.clip(evals, 0, None) + epsilon)) @ evecs.T
    return mean, w
