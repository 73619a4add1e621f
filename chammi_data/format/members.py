"""Decoding one image member's bytes, checked against what its manifest row or record declares.

:func:`decode_image_fast` is the read of every member (any codec, ``codec.frame_info`` tells them apart):
bounded by the row's shape and dtype before anything is allocated, decoded into a pooled buffer, the ``.npy``
header of our own writer parsed by a strict regex, the pixels a view. :func:`decode_member` also reads the
guidance tail of a CHAMMI-75 member (the cells after the pixels, ``codec``); :func:`decode_row` picks one or
the other by the row's source, and :func:`add_guidance` puts the cells into a sample's ``meta``. The tar
parser and the readers of :mod:`chammi_data.format.shards` use these.
"""

from __future__ import annotations

import functools
import io
import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from chammi_data.format.buffers import pooled_empty
from chammi_data.format.codec import (
    MAX_TAIL_BYTES,
    CorruptSampleError,
    Guidance,
    decode_frame,
    decode_image,
    frame_info,
    parse_tail,
)
from chammi_data.format.release_format import expected_shape
from chammi_data.format.vocab import is_variable

# The exact header ``np.save`` writes for a C-order (C, H, W) uint8/uint16 array; anything else takes the
# general (slower, equally strict) path of ``codec.decode_image``.
_NPY_HEADER = re.compile(
    rb"\{'descr': '([<|]u[12])', 'fortran_order': False, 'shape': \((\d+), (\d+), (\d+)\), \} *\n"
)


#: largest decoded image we allocate for when nothing better is known (a hostile frame may declare any size)
MAX_IMAGE_BYTES = 1 << 28
#: largest ``.json`` record member read from a shard
MAX_RECORD_BYTES = 1 << 20
#: slack for the ``.npy`` header in front of the pixels (np.save pads it to a multiple of 64 bytes)
_NPY_HEADER_MAX = 4096


def _size_bounds(expected: Mapping[str, Any] | None) -> tuple[int, int, str]:
    """(least, most) decoded bytes an image member may have, and a description for errors. A record or row
    that declares more pixels than :data:`MAX_IMAGE_BYTES` is refused here, before anything is read."""
    if expected is None:
        return 10, MAX_IMAGE_BYTES, f"the {MAX_IMAGE_BYTES}-byte limit"
    least, most, want = _bounds_for(expected_shape(expected), str(expected.get("dtype", "uint16")))
    if least > MAX_IMAGE_BYTES:
        raise ValueError(f"declares {want}, more than the {MAX_IMAGE_BYTES}-byte limit for an image")
    return least, min(most, MAX_IMAGE_BYTES), want


@functools.lru_cache(maxsize=64)
def _bounds_for(shape: tuple[int, int, int], dtype: str) -> tuple[int, int, str]:
    pixels = math.prod(shape) * np.dtype(dtype).itemsize
    return (
        pixels + 10,
        pixels + _NPY_HEADER_MAX,
        f"{pixels} bytes of pixels for {shape} {dtype} (+ .npy header)",
    )


def decode_image_fast(
    data: bytes | memoryview, where: str = "image", expected: Mapping[str, Any] | None = None
) -> np.ndarray:
    """Same result and checks as ``codec.decode_image``, without ``np.load``'s copies and ``literal_eval``.

    The frame (zstd, or LZ4: ``codec.frame_info`` tells them apart) is decoded straight into a new writable
    numpy buffer of exactly the size its header declares, the fixed ``.npy`` header of our own writer is
    parsed with a strict regex and the pixels are a view into that buffer; any other header takes the
    general path of ``codec.decode_image``. Frames written with a content checksum are verified by the
    decoder.

    Nothing is allocated beyond what the frame declares, and only after that size was checked: against
    ``expected`` (a manifest row or record: shape and dtype; a shape over :data:`MAX_IMAGE_BYTES` is refused
    from the record alone) or the limit. A frame that declares no size is refused. Bytes after the image are
    an error here (a CHAMMI-75 member's guidance tail is read by :func:`decode_member`).
    """
    return _decode(data, where, expected, tail=False)[0]


def decode_member(
    data: bytes | memoryview, where: str = "image", expected: Mapping[str, Any] | None = None
) -> tuple[np.ndarray, Guidance | None]:
    """(image, guidance or None) of a member that may carry a guidance tail (``codec`` module docstring),
    with the checks of :func:`decode_image_fast`; the tail may add at most ``codec.MAX_TAIL_BYTES``."""
    image, rest = _decode(data, where, expected, tail=True)
    return image, parse_tail(rest, where)


def _decode(
    data: bytes | memoryview, where: str, expected: Mapping[str, Any] | None, tail: bool
) -> tuple[np.ndarray, Any]:
    """(image, the decoded bytes after its ``.npy``): :func:`decode_image_fast`, with a tail if ``tail``."""
    try:
        least, most, want = _size_bounds(expected)
        frame = frame_info(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptSampleError(f"{where}: cannot decode image ({exc})") from None
    if tail:
        most, want = most + MAX_TAIL_BYTES, f"{want} (+ up to {MAX_TAIL_BYTES} bytes of guidance)"
    size = frame.content_size
    if size < 0:
        raise CorruptSampleError(
            f"{where}: cannot decode image (the {frame.kind} frame does not declare its decoded size; a "
            "chammi member always does)"
        )
    if not least <= size <= most:
        raise CorruptSampleError(
            f"{where}: {frame.kind} frame declares {size} decoded bytes, expected {want}"
        )
    try:
        buf = decode_frame(data, frame, alloc=pooled_empty)  # a pooled buffer: no page faults per decode
    except Exception as exc:  # zstd / lz4 errors: checksum, truncation, a frame that lies about its size
        raise CorruptSampleError(f"{where}: cannot decode image ({type(exc).__name__}: {exc})") from None
    head = buf[:10].tobytes()
    start = 10 + int.from_bytes(head[8:10], "little")
    m = _NPY_HEADER.fullmatch(buf[10:start].tobytes()) if head[:8] == b"\x93NUMPY\x01\x00" else None
    if m is None:  # another .npy header: numpy's own reader (which stops after the image's bytes)
        return _general(buf, data, where, most, tail)
    dtype = np.dtype(m.group(1).decode("ascii"))
    shape = tuple(int(x) for x in m.groups()[1:])
    end = start + math.prod(shape) * dtype.itemsize
    if size < end or (size > end and not tail):
        raise CorruptSampleError(
            f"{where}: cannot decode image (pixel data has {size - start} bytes for shape {shape} {dtype})"
        )
    return buf[start:end].view(dtype).reshape(shape), buf[end:]


def _general(buf: np.ndarray, data: bytes | memoryview, where: str, most: int, tail: bool) -> tuple[Any, Any]:
    if not tail:
        return decode_image(data, where, max_bytes=most), buf[:0]
    bio = io.BytesIO(buf.tobytes())
    try:
        image = np.load(bio, allow_pickle=False)
    except Exception as exc:
        raise CorruptSampleError(f"{where}: cannot decode image ({type(exc).__name__}: {exc})") from None
    if image.ndim != 3 or image.dtype not in (np.uint8, np.uint16):
        raise CorruptSampleError(f"{where}: expected a (C, H, W) uint8/uint16 array, got {image.shape}")
    return image, buf[bio.tell() :]


def decode_row(
    data: bytes | memoryview, where: str, row: Mapping[str, Any]
) -> tuple[np.ndarray, Guidance | None]:
    """(image, guidance) of a member of a manifest row or record: the members of a variable source
    (CHAMMI-75) may carry a guidance tail (:func:`decode_member`), any other member must be the image
    alone."""
    if is_variable(str(row.get("source", ""))):
        return decode_member(data, where=where, expected=row)
    return decode_image_fast(data, where=where, expected=row), None


def add_guidance(meta: dict[str, Any], guidance: Guidance | None) -> dict[str, Any]:
    """Put an image's cells into a sample's ``meta``: ``centroids`` (N, 2) int32 (x, y) and, when known,
    ``cell_sizes`` (N,) float32; nothing for an image without guidance."""
    if guidance is not None:
        meta["centroids"] = guidance.centroids
        if guidance.sizes is not None:
            meta["cell_sizes"] = guidance.sizes
    return meta
