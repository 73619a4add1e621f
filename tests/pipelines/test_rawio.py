"""Raw image headers without decoding: PNG and TIFF shapes and bit depths, by content, and the size limit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

import pipelines.steps.rawio as rawio


@pytest.mark.parametrize(
    "array, shape, bits",
    [
        (np.zeros((30, 40), np.uint8), (30, 40), 8),
        (np.zeros((30, 40), np.uint16), (30, 40), 16),
        (np.zeros((30, 40, 3), np.uint8), (30, 40, 3), 8),
    ],
)
def test_png_and_tiff_headers_by_content(tmp_path: Path, array: np.ndarray, shape: tuple, bits: int) -> None:
    Image.fromarray(array).save(tmp_path / "a.png")
    (tmp_path / "a.png").rename(tmp_path / "a.tif")  # the name lies: the content decides
    assert rawio.image_header(tmp_path / "a.tif") == rawio.ImageHeader(shape, bits)
    tifffile.imwrite(tmp_path / "b.png", array)
    assert rawio.image_header(tmp_path / "b.png") == rawio.ImageHeader(shape, bits)


def test_size_limit_message_names_file_dimensions_and_limit() -> None:
    rawio.check_size(rawio.ImageHeader((100, 100), 16), 10_000, "f.tif", "cp.max_field_pixels")
    with pytest.raises(rawio.ImageTooLarge) as err:
        rawio.check_size(
            rawio.ImageHeader((2, 3, 100, 101), 16), 10_000, "s.ome.tiff", "wtc11.max_stack_voxels"
        )
    assert str(err.value) == (
        "image too large: s.ome.tiff is 2 x 3 x 100 x 101 (60,600 pixels), over "
        "wtc11.max_stack_voxels = 10,000; not decoded"
    )


def test_field_checks_name_every_odd_file() -> None:
    names = {"a": "a.png", "b": "b.png", "c": "c.png"}
    rawio.check_field(
        {k: (5, 5) for k in names}, {k: 8 for k in names}, names, "a", False, "x.mixed_bit_depth"
    )
    with pytest.raises(rawio.FieldMismatch, match=r"from a.png \(5x5\): b.png is 4x5, c.png is 5x4$") as err:
        rawio.check_field(
            {"a": (5, 5), "b": (4, 5), "c": (5, 4)}, {k: 8 for k in names}, names, "a", False, "x"
        )
    assert err.value.key == "b"
    depths = {"a": 8, "b": 16, "c": 8}
    with pytest.raises(
        rawio.FieldMismatch, match=r"a.png 8-bit, b.png 16-bit, c.png 8-bit \(option x.mixed_bit_depth"
    ):
        rawio.check_field({k: (5, 5) for k in names}, depths, names, "a", False, "x.mixed_bit_depth")
    rawio.check_field({k: (5, 5) for k in names}, depths, names, "a", True, "x.mixed_bit_depth")
