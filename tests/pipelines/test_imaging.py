"""Shared pixel steps: percentile scaling, finiteness, centre crop/pad and border policies."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.steps.imaging import CropInfo, center_crop_or_pad, check_finite, crop_box, to_uint8


def test_to_uint8_scales_each_channel_to_full_range() -> None:
    rng = np.random.default_rng(0)
    arr = np.stack([rng.normal(100, 10, (20, 30)), rng.normal(5000, 800, (20, 30))]).astype(np.float32)
    out = to_uint8(arr, 1, 99)
    assert out.dtype == np.uint8 and out.shape == arr.shape
    for k in range(2):
        assert out[k].min() == 0 and out[k].max() == 255
    # monotone: brighter input pixel never maps to a darker output pixel
    order = np.argsort(arr[1].ravel())
    assert np.all(np.diff(out[1].ravel()[order].astype(int)) >= 0)


def test_to_uint8_axis_and_2d() -> None:
    arr = np.arange(2 * 4 * 5, dtype=np.uint16).reshape(4, 5, 2)
    out = to_uint8(arr, 0, 100, axis=-1)
    assert out.shape == arr.shape
    assert out[..., 0].max() == 255 and out[..., 1].min() == 0
    flat = to_uint8(np.arange(12).reshape(3, 4))
    assert flat[0, 0] == 0 and flat[-1, -1] == 255


def test_to_uint8_constant_and_sparse() -> None:
    with pytest.raises(ValueError, match="constant image"):
        to_uint8(np.full((2, 8, 8), 7.0))
    with pytest.raises(ValueError, match=r"constant image \(channel 1\)"):
        to_uint8(np.stack([np.arange(64.0).reshape(8, 8), np.zeros((8, 8))]))
    sparse = np.zeros((1, 50, 50))
    sparse[0, 3, 3] = 9.0  # the 99th percentile is 0: fall back to min/max, do not raise
    assert to_uint8(sparse, 0.5, 99)[0, 3, 3] == 255


def test_check_finite_names_where() -> None:
    check_finite(np.zeros((3, 3), dtype=np.uint8), "ok")
    bad = np.ones((2, 2))
    bad[0, 1] = np.nan
    with pytest.raises(ValueError, match="file.tif.*1 non-finite"):
        check_finite(bad, "file.tif")
    with pytest.raises(ValueError, match="non-finite"):
        to_uint8(np.array([[1.0, np.inf]]), where="x")


def test_center_crop_or_pad() -> None:
    arr = np.arange(1 * 5 * 8).reshape(1, 5, 8).astype(np.uint8)
    out = center_crop_or_pad(arr, (7, 4), fill=0)
    assert out.shape == (1, 7, 4)
    assert np.all(out[:, 0] == 0) and np.all(out[:, -1] == 0)  # 2 rows padded: 1 top, 1 bottom
    np.testing.assert_array_equal(out[0, 1:6], arr[0, :, 2:6])
    odd = center_crop_or_pad(np.ones((2, 3, 3), np.uint8), (6, 3))
    assert odd[:, 1:4].all() and not odd[:, 0].any() and not odd[:, 4:].any()


def test_crop_box_policies() -> None:
    field = np.arange(1 * 20 * 30, dtype=np.uint16).reshape(1, 20, 30)
    inside, info = crop_box(field, (10, 15), (6, 8))
    assert isinstance(info, CropInfo) and not info.touched_border and not info.padded
    np.testing.assert_array_equal(inside[0], field[0, 7:13, 11:19])

    padded, info = crop_box(field, (1, 2), (6, 8), "pad")
    assert info.touched_border and info.padded and (info.top, info.left) == (-2, -2)
    assert padded[0, 0, 0] == 0 and padded[0, 2, 2] == field[0, 0, 0]

    shifted, info = crop_box(field, (1, 29), (6, 8), "shift")
    assert info.touched_border and not info.padded and (info.shift_y, info.shift_x) == (2, -3)
    np.testing.assert_array_equal(shifted[0], field[0, 0:6, 22:30])

    skipped, info = crop_box(field, (19, 15), (6, 8), "skip")
    assert skipped is None and info.touched_border

    big, info = crop_box(field, (10, 15), (24, 8), "shift")
    assert big.shape == (1, 24, 8) and info.padded
    with pytest.raises(ValueError, match="unknown border policy"):
        crop_box(field, (0, 0), (2, 2), "wrap")  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_histogram_percentiles_match_numpy(dtype) -> None:
    from pipelines.steps.imaging import _clip_points

    rng = np.random.default_rng(2)
    for n in (1, 2, 7, 1000):
        arr = rng.integers(0, np.iinfo(dtype).max, n).astype(dtype)
        for lo, hi in ((0, 100), (0.1, 99.9), (0.05, 99.95), (37.5, 62.5)):
            got = _clip_points(arr, lo, hi)
            want = np.percentile(arr.astype(np.float64), [lo, hi])
            np.testing.assert_allclose(got[:2], want, rtol=0, atol=1e-9)
            assert got[2:] == (arr.min(), arr.max())
    f = rng.random(50)
    np.testing.assert_allclose(_clip_points(f, 5, 95)[:2], np.percentile(f, [5, 95]))


@pytest.mark.parametrize(
    "seed, low, high", [(0, 0.0, 99.9), (1, 1.0, 99.0), (2, 0.05, 99.95), (3, 0.0, 100.0)]
)
def test_integer_fast_path_is_byte_identical_to_the_float_reference(seed, low, high) -> None:
    # uint16 -> histogram percentiles + lookup table; float64 -> np.percentile + per-pixel formula
    rng = np.random.default_rng(seed)
    img = np.clip(rng.gamma(2.0, 900.0, (123, 157)), 0, 65535).astype(np.uint16)
    img[:3, :3] = 65535  # saturated corner
    assert np.array_equal(to_uint8(img, low, high), to_uint8(img.astype(np.float64), low, high))
    small = rng.integers(0, 256, (3, 40, 50), dtype=np.uint8)
    assert np.array_equal(to_uint8(small, low, high), to_uint8(small.astype(np.float64), low, high))
    sparse = np.zeros((50, 50), np.uint16)
    sparse[4, 4] = 300  # percentiles coincide -> min/max fallback on both paths
    assert np.array_equal(to_uint8(sparse, low, high), to_uint8(sparse.astype(np.float64), low, high))


def test_to_uint8_integer_paths_match_the_float_formula() -> None:
    # the histogram + lookup-table path (uint16, and int32 below 2**22) gives the bytes of the float64 formula
    rng = np.random.default_rng(5)
    # negatives: the float path itself
    for arr in (
        rng.integers(0, 65536, (2, 40, 50)).astype(np.uint16),
        rng.integers(0, 3_000_000, (2, 40, 50)).astype(np.int32),
        rng.integers(-50, 400, (2, 40, 50)).astype(np.int32),
    ):
        got = to_uint8(arr, 1, 99)
        ref = to_uint8(arr.astype(np.float64), 1, 99)
        np.testing.assert_array_equal(got, ref)
