"""Metric identities and the transforms the scorers share, against their definitions and the libraries."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from chammi_data.evaluation.benchmarks.metrics import (
    average_precision,
    pr_auc,
    recall_at_k,
    roc_auc,
    spherize,
    wasserstein,
    whiten_on_controls,
)


def test_ap_of_a_perfect_ranking_is_one_and_of_the_worst_is_its_floor() -> None:
    y = np.array([1, 1, 1, 0, 0, 0, 0], bool)
    scores = np.arange(7)[::-1].astype(float)  # positives first
    assert average_precision(y, scores) == 1.0
    assert pr_auc(y, scores) == pytest.approx(1.0)
    # all positives last: AP = mean over positives of (k / rank) = (1/5 + 2/6 + 3/7) / 3
    assert average_precision(y, -scores) == pytest.approx((1 / 5 + 2 / 6 + 3 / 7) / 3)


def test_auc_of_a_reversed_ranking_is_one_minus_auc() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(200) < 0.3
    s = rng.normal(size=200) + y
    assert roc_auc(y, -s) == pytest.approx(1 - roc_auc(y, s))
    assert roc_auc(y, np.where(y, 1.0, 0.0)) == 1.0


def test_recall_at_k() -> None:
    y = np.array([0, 1, 0, 1, 1, 0], bool)
    s = np.array([6, 5, 4, 3, 2, 1], float)
    assert recall_at_k(y, s, 2) == pytest.approx(1 / 3)
    assert recall_at_k(y, s, 4) == pytest.approx(2 / 3)
    assert recall_at_k(y, s, 100) == 1.0
    assert np.isnan(recall_at_k(np.zeros(3, bool), s[:3], 2))
    # ties: the lower index comes first
    assert recall_at_k(np.array([0, 1], bool), np.array([1.0, 1.0]), 1) == 0.0


def test_wasserstein_is_scipys_and_zero_for_one_distribution() -> None:
    rng = np.random.default_rng(1)
    u, v = rng.normal(size=300), rng.normal(1.0, size=200)
    assert wasserstein(u, v) == scipy.stats.wasserstein_distance(u, v)
    assert wasserstein(u, u) == 0.0
    assert wasserstein(u, u + 2.0) == pytest.approx(2.0)


@pytest.mark.parametrize("n", [40, 6])  # more controls than features, and fewer (rank-deficient)
def test_spherize_equals_pycytominer(n: int) -> None:
    pycytominer = pytest.importorskip("pycytominer.operations")
    rng = np.random.default_rng(2)
    x = rng.normal(size=(60, 10)) @ rng.normal(size=(10, 10)) + 3.0
    controls = np.zeros(60, bool)
    controls[:n] = True
    import pandas as pd

    ref = pycytominer.Spherize(epsilon=1e-3, center=True, method="ZCA-cor").fit(pd.DataFrame(x[controls]))
    expected = ref.transform(pd.DataFrame(x)).to_numpy()
    ours, keep = spherize(x, controls, 1e-3)
    assert keep.all()
    np.testing.assert_allclose(ours, expected, atol=1e-6, rtol=0)


def test_spherize_whitens_the_controls_and_drops_constant_features() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(500, 5)) @ rng.normal(size=(5, 5))
    x = np.hstack([x, np.ones((500, 1))])  # constant over the controls: cannot be standardised
    out, keep = spherize(x, np.arange(400), 1e-9)
    assert keep.tolist() == [True] * 5 + [False]
    cov = np.cov(out[:400], rowvar=False)
    np.testing.assert_allclose(cov, np.eye(5), atol=1e-6)


def test_whitening_on_controls_gives_identity_covariance() -> None:
    rng = np.random.default_rng(4)
    c = rng.normal(size=(300, 4)) @ rng.normal(size=(4, 4)) + 5
    mean, w = whiten_on_controls(c, 0.0)
    z = (c - mean) @ w
    np.testing.assert_allclose(z.T @ z / len(z), np.eye(4), atol=1e-8)
    np.testing.assert_allclose(w, w.T, atol=1e-10)  # ZCA: symmetric, a rotation back to feature axes
