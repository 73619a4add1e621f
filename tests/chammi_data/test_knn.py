"""Exact 1-NN: ties to the lowest index, float32 == float64, blocks, groups, and agreement with
scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

from chammi_data.evaluation.knn import NearestNeighborIndex, nearest_neighbors


def _reference_argbest(q: np.ndarray, r: np.ndarray, metric: str) -> np.ndarray:
    """Plain float64 brute force; np.argmax returns the first maximum, i.e. the lowest index on ties."""
    q, r = q.astype(np.float64), r.astype(np.float64)
    if metric == "cosine":
        scores = q @ (r / np.linalg.norm(r, axis=1, keepdims=True)).T
    else:
        scores = -(((q[:, None, :] - r[None, :, :]) ** 2).sum(-1))
    return scores.argmax(axis=1)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_duplicate_references_go_to_the_lowest_index(metric: str) -> None:
    rng = np.random.default_rng(0)
    refs = rng.normal(size=(10, 8)).astype(np.float32)
    refs[7] = refs[3]
    refs[9] = refs[3]
    if metric == "cosine":
        refs[5] = 2 * refs[3]  # same direction (power-of-two scale keeps it exact): a cosine tie too
    queries = refs[[3, 9, 7]] + np.float32(1e-3) * rng.normal(size=(3, 8)).astype(np.float32)
    got = nearest_neighbors(queries, refs, metric)
    assert got.tolist() == [3, 3, 3]


def test_equidistant_l2_references_tie_to_lowest_index() -> None:
    refs = np.array([[2.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    queries = np.zeros((1, 2), dtype=np.float32)
    assert nearest_neighbors(queries, refs, "l2").tolist() == [1]
    # Cosine ignores magnitude: [2,0] and [1,0] tie, the lower index (0) wins.
    assert nearest_neighbors(np.array([[1.0, 0.0]]), refs, "cosine").tolist() == [0]


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_float32_matches_float64_on_near_ties(metric: str) -> None:
    rng = np.random.default_rng(1)
    base = rng.normal(size=(40, 32))
    # Clusters of near-duplicates closer than float32 resolution: plain float32 argmax would be unreliable
    # here.
    refs = np.repeat(base, 6, axis=0) + 1e-9 * rng.normal(size=(240, 32))
    refs[::7] = np.repeat(base, 6, axis=0)[::7]  # and some exact duplicates
    queries = base[rng.integers(0, 40, size=100)] + 1e-3 * rng.normal(size=(100, 32))
    expected = _reference_argbest(queries, refs, metric)
    got32 = nearest_neighbors(queries, refs, metric, dtype=torch.float32)
    got64 = nearest_neighbors(queries, refs, metric, dtype=torch.float64)
    np.testing.assert_array_equal(got64, expected)
    np.testing.assert_array_equal(got32, expected)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_block_size_does_not_change_the_answer(metric: str) -> None:
    rng = np.random.default_rng(2)
    refs = rng.normal(size=(57, 16)).astype(np.float32)
    queries = rng.normal(size=(33, 16)).astype(np.float32)
    index = NearestNeighborIndex(refs, metric)
    one = index.search(queries, block_size=1)  # one query row per block
    seven = index.search(queries, block_size=57 * 7)
    whole = index.search(queries, block_size=10**9)
    np.testing.assert_array_equal(one, whole)
    np.testing.assert_array_equal(seven, whole)
    np.testing.assert_array_equal(whole, _reference_argbest(queries, refs, metric))


@pytest.mark.filterwarnings("ignore:The number of unique classes")
@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_agrees_with_sklearn_brute_force(metric: str) -> None:
    rng = np.random.default_rng(3)
    refs = rng.normal(size=(300, 24)).astype(np.float32)
    queries = rng.normal(size=(200, 24)).astype(np.float32)
    # Labels = reference indices, so the classifier's prediction is the neighbour's index (no ties in random
    # data).
    clf = KNeighborsClassifier(
        n_neighbors=1, algorithm="brute", metric="cosine" if metric == "cosine" else "euclidean"
    )
    clf.fit(refs.astype(np.float64), np.arange(len(refs)))
    np.testing.assert_array_equal(
        nearest_neighbors(queries, refs, metric), clf.predict(queries.astype(np.float64))
    )


def test_groups_exclude_same_group_references() -> None:
    refs = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]], dtype=np.float32)
    queries = np.array([[1.0, 0.0], [1.0, 0.0]], dtype=np.float32)
    got = nearest_neighbors(
        queries, refs, "cosine", query_groups=np.array([0, 1]), reference_groups=np.array([0, -1, 1])
    )
    assert got.tolist() == [1, 0]
    with pytest.raises(ValueError, match="no reference left"):
        nearest_neighbors(
            queries[:1], refs[:1], "cosine", query_groups=np.array([0]), reference_groups=np.array([0])
        )


def test_bad_inputs_raise_clear_errors() -> None:
    refs = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match="zero-norm"):
        nearest_neighbors(np.zeros((1, 3)), refs, "cosine")
    assert nearest_neighbors(np.zeros((1, 3)), refs, "l2").tolist() == [0]  # l2 accepts a zero query
    with pytest.raises(ValueError, match="dimension"):
        nearest_neighbors(np.ones((1, 4)), refs, "cosine")
    with pytest.raises(ValueError, match="unknown metric"):
        nearest_neighbors(np.ones((1, 3)), refs, "manhattan")
    with pytest.raises(ValueError, match="empty"):
        nearest_neighbors(np.ones((1, 3)), np.zeros((0, 3)), "l2")
