"""Segmentation backends and the object-F1 scorer (CPU, synthetic fields made here)."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.sources.hpa.synth import quantise, render_field
from pipelines.steps.segmentation import (
    cell_properties,
    estimate_nucleus_diameter,
    iou_matrix,
    list_backends,
    match_objects,
    segment,
)


def _disc(shape: tuple[int, int], cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 < r**2


@pytest.fixture(scope="module")
def hpa_field() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(3)
    images, truth = render_field(rng, 14, "U-2 OS")
    return {k: quantise(rng, v, 16, 1.0, 0.03, 0.02) for k, v in images.items()}, truth


def test_watershed_recovers_cells_and_nuclei_of_a_synthetic_field(hpa_field):
    images, truth = hpa_field
    seg = segment(images["blue"], [images["red"], images["yellow"], images["green"]])
    assert seg.cells.shape == images["blue"].shape and seg.cells.dtype == np.int32
    cells = match_objects(truth["cells"], seg.cells)
    nuclei = match_objects(truth["nuclei"], seg.nuclei)
    assert cells["f1"] >= 0.9 and cells["mean_matched_iou"] > 0.75, cells
    assert nuclei["f1"] >= 0.9 and nuclei["mean_matched_iou"] > 0.75, nuclei
    # every nucleus lies inside the cell with the same label
    inside = seg.nuclei > 0
    assert np.array_equal(seg.cells[inside], seg.nuclei[inside])


def test_touching_nuclei_are_split():
    shape = (200, 260)
    mask = _disc(shape, 100, 95, 36) | _disc(shape, 100, 160, 36)
    img = np.where(mask, 200, 10).astype(np.uint8)
    seg = segment(img, downsample=1)
    assert seg.nuclei.max() == 2
    assert seg.nuclei[100, 95] != seg.nuclei[100, 160] and 0 not in (
        seg.nuclei[100, 95],
        seg.nuclei[100, 160],
    )


def test_forced_downsampling_returns_full_size_labels(hpa_field):
    images, truth = hpa_field
    seg = segment(images["blue"], images["red"], downsample=4)
    assert seg.factor == 4 and seg.cells.shape == images["blue"].shape
    assert match_objects(truth["nuclei"], seg.nuclei)["f1"] >= 0.8


def test_nucleus_diameter_estimate_is_close(hpa_field):
    images, truth = hpa_field
    areas = np.bincount(truth["nuclei"].ravel())[1:]
    true_d = np.sqrt(4 * np.median(areas[areas > 0]) / np.pi)
    assert 0.7 * true_d < estimate_nucleus_diameter(images["blue"]) < 1.3 * true_d


def test_blank_field_gives_no_cells():
    seg = segment(np.zeros((128, 128), np.uint16), [np.zeros((128, 128), np.uint16)])
    assert seg.count == 0
    one = np.zeros((128, 128), np.uint8)
    one[5, 5] = 255  # a hot pixel is not a nucleus
    assert segment(one).count == 0
    rng = np.random.default_rng(0)
    noise = rng.normal(1000, 50, (384, 384)).astype(np.float32)  # an empty well: thresholds find blobs
    assert segment(noise, [noise]).count == 0
    assert segment(noise, min_contrast=0).count > 10  # ...which the contrast test is what removes


def test_bad_arguments_raise_clear_errors(tmp_path):
    img = np.zeros((32, 32), np.uint8)
    with pytest.raises(KeyError, match="watershed"):
        segment(img, backend="nope")
    with pytest.raises(ValueError, match="does not match"):
        segment(img, np.zeros((16, 16), np.uint8))
    with pytest.raises(ValueError, match="downsample"):
        segment(img, downsample=0)
    assert {"watershed", "cellpose"} <= set(list_backends())


def test_cellpose_backend_never_downloads(tmp_path):
    img = np.zeros((32, 32), np.uint8)
    missing = tmp_path / "cpsam_weights.pt"
    with pytest.raises(FileNotFoundError, match="cpsam_weights.pt"):
        segment(img, img, backend="cellpose", weights=missing)
    with pytest.raises(ValueError, match="weights=PATH"):
        segment(img, img, backend="cellpose")
    try:
        import cellpose  # noqa: F401
    except ImportError:
        present = tmp_path / "model.pt"
        present.write_bytes(b"not a model")
        with pytest.raises(ImportError, match=r"chammi\[cellpose\]"):
            segment(img, img, backend="cellpose", weights=present)


def test_match_objects_on_hand_made_masks():
    gt = np.zeros((20, 20), np.int32)
    gt[2:8, 2:8] = 1
    gt[10:18, 10:18] = 2
    gt[2:6, 12:18] = 7  # labels need not be consecutive
    perfect = match_objects(gt, gt * 3)  # renumbered prediction
    assert perfect == {
        "tp": 3,
        "fp": 0,
        "fn": 0,
        "precision": 1.0,
        "recall": 1.0,
        "f1": 1.0,
        "mean_matched_iou": 1.0,
    }
    pred = np.zeros_like(gt)
    pred[2:8, 2:8] = 5  # exact
    pred[10:18, 14:18] = 6  # IoU 0.5 with gt 2 -> counts at threshold 0.5
    pred[0:2, 0:2] = 9  # false positive
    r = match_objects(gt, pred)
    assert (r["tp"], r["fp"], r["fn"]) == (2, 1, 1)
    assert r["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert match_objects(gt, pred, iou_threshold=0.6)["tp"] == 1
    assert iou_matrix(gt, pred).shape == (3, 3)
    assert match_objects(np.zeros((4, 4)), np.zeros((4, 4)))["f1"] == 1.0
    assert match_objects(gt, np.zeros_like(gt))["f1"] == 0.0
    with pytest.raises(ValueError, match="shape"):
        match_objects(gt, gt[:10])


def test_one_merged_prediction_matches_at_most_one_object():
    gt = np.zeros((10, 20), np.int32)
    gt[:, :10], gt[:, 10:] = 1, 2
    merged = np.ones_like(gt)  # IoU exactly 0.5 with either object
    assert (lambda r: (r["tp"], r["fp"], r["fn"]))(match_objects(gt, merged)) == (1, 0, 1)
    assert (lambda r: (r["tp"], r["fp"], r["fn"]))(match_objects(gt, merged, 0.51)) == (0, 1, 2)


def test_cell_properties_flags_edge_cells():
    lab = np.zeros((50, 50), np.int32)
    lab[0:10, 20:30] = 1
    lab[20:30, 20:30] = 2
    props = {p["label"]: p for p in cell_properties(lab)}
    assert props[1]["touches_edge"] and not props[2]["touches_edge"]
    assert props[2]["centroid"] == pytest.approx((24.5, 24.5)) and props[2]["area"] == 100
