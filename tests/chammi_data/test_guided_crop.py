"""Guided crops of whole CHAMMI-75 images: the crop table, determinism, the box inside the image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from chammi_data.augment.guided_crop import CropSize, CropTable, GuidedCrop, load_crop_table


def test_the_crop_table_says_where_each_value_comes_from():
    table = load_crop_table()
    assert {k: (v.crop, v.long_side) for k, v in table.studies.items()} == {
        "wtc0001": (256, 450),
        "jump0001": (112, 450),
        "hpa0018": (200, 450),
        "idr0017": (56, 300),
    }
    assert table.jitter == 0.1 and table.for_study("unlisted").crop is None  # unlisted: used whole
    assert all(v.source for v in [*table.studies.values(), table.default])


@pytest.mark.parametrize(
    "text,match",
    [
        ("studies: {a: {crop: 10, source: x}}", "both be positive integers or both null"),
        ("studies: {a: {crop: 10, long_side: 450}}", "expected \\{crop, long_side, source\\}"),
        ("jitter: 1.5", "jitter must be a fraction"),
        ("studies: {a: {crop: 0, long_side: 450, source: x}}", "positive integers"),
    ],
)
def test_a_bad_table_names_the_entry(tmp_path: Path, text: str, match: str):
    path = tmp_path / "crops.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_crop_table(path)


def test_same_seed_same_crop_other_seed_other_crop():
    crop = GuidedCrop(32)
    image = np.random.default_rng(0).integers(0, 255, (3, 300, 400), dtype=np.uint8)
    cells = np.array([[50, 60], [200, 150], [390, 290]])
    a, box_a = crop(image, cells, "wtc0001", seed=7)
    b, box_b = crop(image, cells, "wtc0001", seed=7)
    assert box_a == box_b and np.array_equal(a, b) and a.shape == (3, 32, 32) and a.dtype == np.uint8
    boxes = {crop(image, cells, "wtc0001", seed=s)[1] for s in range(40)}
    assert len(boxes) > 10 and {bx[3] for bx in boxes} == {0, 1, 2}  # every cell gets picked


def test_the_box_is_centred_on_a_cell_sized_by_the_study_and_always_inside():
    table = CropTable({"s": CropSize(100, 450, "test")}, jitter=0.1)
    crop = GuidedCrop(16, table)
    rng = np.random.default_rng(1)
    for trial in range(300):
        h, w = (int(x) for x in rng.integers(5, 700, 2))
        cells = np.stack([rng.integers(0, w, 4), rng.integers(0, h, 4)], axis=1)
        if trial % 7 == 0:
            cells = np.array([[0, 0], [w - 1, h - 1]])  # cells on the corners: the box is shifted inside
        top, left, side, cell = crop.box(h, w, cells, "s", seed=trial)
        assert 0 <= top <= h - side and 0 <= left <= w - side and 1 <= side <= min(h, w)
        expected = 100 * max(h, w) / 450
        if expected * 1.1 < min(h, w):  # not clamped by the image: the jitter stays within +-10%
            assert expected * 0.9 - 1 <= side <= expected * 1.1 + 1
        x, y = cells[cell]
        assert left <= x < left + side and top <= y < top + side  # the chosen cell is in the crop
    # a crop larger than the image's short side: the whole short side; no cells: a random point, inside
    assert (
        GuidedCrop(16, CropTable({"s": CropSize(450, 450, "test")})).box(20, 30, None, "s", seed=3)[2] == 20
    )
    top, left, side, cell = crop.box(600, 500, None, "s", seed=4)
    assert cell == -1 and top + side <= 600 and left + side <= 500


def test_studies_used_whole_keep_the_pixel_aspect():
    crop = GuidedCrop(24)
    image = np.arange(2 * 40 * 60, dtype=np.int64).reshape(2, 40, 60).astype(np.uint8)
    boxes = {crop.box(40, 60, None, "unlisted", seed=s) for s in range(20)}
    assert {(t, b[2]) for t, *_ in boxes for b in [(0, 0, 40)]} == {(0, 40)}  # full height, square
    assert len({b[1] for b in boxes}) > 1  # the offset along the long side varies
    out, _ = crop(image, None, "unlisted", seed=0)
    assert out.shape == (2, 24, 24)
    with pytest.raises(ValueError, match="uint8"):
        crop(image.astype(np.uint16), None, "unlisted", seed=0)
    with pytest.raises(ValueError, match="positive integer"):
        GuidedCrop(0)
