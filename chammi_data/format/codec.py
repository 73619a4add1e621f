"""The on-disk encoding of one cell image inside a tar shard: a zstd-compressed ``.npy``, optionally
followed by the image's guidance.

Member names are ``<key>.npy.zst`` and ``<key>.json``. Decoding never unpickles (``allow_pickle=False``)
and checks dtype and rank, so a hostile or corrupted member gives a clear error instead of an object.

**Guidance tail** (images of a variable source, CHAMMI-75): the member's decompressed bytes are the image's
``.npy`` followed by the ``.npy`` of its cell centroids, int32 (N, 2) as (x = column, y = row), and, when the
source gave them, the ``.npy`` of the cells' areas in pixels, float32 (N,). A plain ``.npy`` reader
(``np.load``, webdataset) reads the image and ignores the rest; our readers get the centroids from the same
bytes they read for the pixels, so a guided crop costs no extra request in either stream order, and the
manifest stays one short row per image. An image without cells has an empty (0, 2) centroid array.
"""

from __future__ import annotations

import functools
import io
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import imagecodecs
import numpy as np
import zstandard

from chammi_data.format.release_format import expected_shape

#: zstd level used for images: on microscopy-like 8-bit tiles higher levels barely shrink the members for many
#: times the encode time (benchmarks/results/loader.md), and decoding speed does not depend on the level.
ZSTD_LEVEL = 3
IMAGE_SUFFIX = ".npy.zst"
JSON_SUFFIX = ".json"
_ALLOWED_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))
#: largest decoded image we allocate for when nothing better is known (a hostile frame may declare any size)
MAX_IMAGE_BYTES = 1 << 28
#: largest ``.json`` record member read from a shard
MAX_RECORD_BYTES = 1 << 20
#: slack for the ``.npy`` header in front of the pixels (np.save pads it to a multiple of 64 bytes)
_NPY_HEADER_MAX = 4096
#: most cells a guidance tail may list, and the most bytes a tail may add to a member
MAX_GUIDANCE_CELLS = 1 << 16
MAX_TAIL_BYTES = MAX_GUIDANCE_CELLS * 12 + 2 * _NPY_HEADER_MAX

# The exact header ``np.save`` writes for a C-order (C, H, W) uint8/uint16 array; anything else takes the
# general (slower, equally strict) path of :func:`decode_image`.
_NPY_HEADER = re.compile(
    rb"\{'descr': '([<|]u[12])', 'fortran_order': False, 'shape': \((\d+), (\d+), (\d+)\), \} *\n"
)
# The headers of a guidance tail's arrays: centroids '<i4' (N, 2), sizes '<f4' (N,).
_TAIL_HEADER = re.compile(
    rb"\{'descr': '(<i4|<f4)', 'fortran_order': False, 'shape': \((\d+),(?: (\d+))?\), \} *\n"
)


class CorruptSampleError(ValueError):
    """An image or record in a shard could not be decoded; the message names the shard and key."""


@dataclass(frozen=True)
class Guidance:
    """The cells of one image: ``centroids`` (N, 2) int32 as (x = column, y = row), ``sizes`` (N,) float32
    areas in pixels or None."""

    centroids: np.ndarray
    sizes: np.ndarray | None = None


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def guidance_tail(guidance: Guidance) -> bytes:
    """The bytes that follow an image's ``.npy`` in its member (see the module docstring)."""
    c = np.ascontiguousarray(guidance.centroids, dtype="<i4")
    if c.ndim != 2 or c.shape[1] != 2 or len(c) > MAX_GUIDANCE_CELLS:
        raise ValueError(f"centroids must be (N, 2) with N <= {MAX_GUIDANCE_CELLS}, got {c.shape}")
    out = _npy(c.reshape(-1, 2))
    if guidance.sizes is not None:
        s = np.ascontiguousarray(guidance.sizes, dtype="<f4")
        if s.shape != (len(c),):
            raise ValueError(f"sizes must be ({len(c)},) like the centroids, got {s.shape}")
        out += _npy(s)
    return out


def encode_image(image: np.ndarray, level: int = ZSTD_LEVEL, guidance: Guidance | None = None) -> bytes:
    """(C, H, W) uint8/uint16 array [+ its guidance] -> zstd-compressed ``.npy`` bytes (deterministic)."""
    arr = np.ascontiguousarray(image)
    if arr.ndim != 3 or arr.dtype not in _ALLOWED_DTYPES:
        raise ValueError(f"image must be (C, H, W) uint8/uint16, got shape {arr.shape} dtype {arr.dtype}")
    payload = _npy(arr) + (guidance_tail(guidance) if guidance is not None else b"")
    # A fresh compressor per call, no threads, no content-size ambiguity: identical input -> identical bytes.
    return zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=True).compress(
        payload
    )


def decode_image(data: bytes | memoryview, where: str = "image", max_bytes: int = 1 << 28) -> np.ndarray:
    """zstd-compressed ``.npy`` bytes -> (C, H, W) array. ``where`` names the shard/key in errors.

    At most ``max_bytes`` are decompressed, whether or not the frame declares its size. A guidance tail is
    ignored (:func:`decode_member` reads it)."""
    return _decode_general(data, where, max_bytes)[0]


def _decode_general(data: bytes | memoryview, where: str, max_bytes: int) -> tuple[np.ndarray, memoryview]:
    """(image, the bytes after its .npy) through zstandard and ``np.load``."""
    try:
        declared = zstandard.frame_content_size(data)
        if declared > max_bytes:
            raise ValueError(f"zstd frame declares {declared} bytes, more than the {max_bytes}-byte limit")
        raw = zstandard.ZstdDecompressor().decompress(data, max_output_size=max_bytes)
        bio = io.BytesIO(raw)
        arr = np.load(bio, allow_pickle=False)
    except Exception as exc:  # zstd errors, truncated npy, object arrays (pickle refused)
        raise CorruptSampleError(f"{where}: cannot decode image ({type(exc).__name__}: {exc})") from None
    if arr.ndim != 3 or arr.dtype not in _ALLOWED_DTYPES:
        raise CorruptSampleError(
            f"{where}: expected a (C, H, W) uint8/uint16 array, got shape {arr.shape} dtype {arr.dtype}"
        )
    return arr, memoryview(raw)[bio.tell() :]


def _size_bounds(expected: Mapping[str, Any] | None) -> tuple[int, int, str]:
    """(least, most) decoded bytes an image member may have, and a description for errors."""
    if expected is None:
        return 10, MAX_IMAGE_BYTES, f"the {MAX_IMAGE_BYTES}-byte limit"
    return _bounds_for(expected_shape(expected), str(expected.get("dtype", "uint16")))


@functools.lru_cache(maxsize=64)
def _bounds_for(shape: tuple[int, int, int], dtype: str) -> tuple[int, int, str]:
    pixels = math.prod(shape) * np.dtype(dtype).itemsize
    return (
        pixels + 10,
        pixels + _NPY_HEADER_MAX,
        f"{pixels} bytes of pixels for {shape} {dtype} (+ .npy header)",
    )


def _decode(
    data: bytes, where: str, expected: Mapping[str, Any] | None, tail: bool
) -> tuple[np.ndarray, Any]:
    """(image, bytes after its .npy) with the checks of :func:`decode_image_fast`; a tail only if ``tail``."""
    least, most, want = _size_bounds(expected)
    if tail:
        most, want = most + MAX_TAIL_BYTES, want + f" (+ up to {MAX_TAIL_BYTES} bytes of guidance)"
    try:
        size = zstandard.frame_content_size(data)
    except zstandard.ZstdError as exc:
        raise CorruptSampleError(f"{where}: cannot decode image (ZstdError: {exc})") from None
    if size < 0:
        return _general(data, where, most, tail)
    if not least <= size <= most:
        raise CorruptSampleError(f"{where}: zstd frame declares {size} decoded bytes, expected {want}")
    buf = np.empty(size, np.uint8)
    try:
        out = imagecodecs.zstd_decode(data, out=buf)
    except imagecodecs.ZstdError as exc:
        raise CorruptSampleError(f"{where}: cannot decode image (ZstdError: {exc})") from None
    if len(out) != size:
        raise CorruptSampleError(f"{where}: cannot decode image (zstd frame gave {len(out)} of {size} bytes)")
    head = buf[:10].tobytes()
    if head[:8] != b"\x93NUMPY\x01\x00" or size < 10:
        return _general(data, where, most, tail)
    start = 10 + int.from_bytes(head[8:10], "little")
    m = _NPY_HEADER.fullmatch(buf[10:start].tobytes())
    if m is None:
        return _general(data, where, most, tail)
    dtype = np.dtype(m.group(1).decode("ascii"))
    shape = tuple(int(x) for x in m.groups()[1:])
    end = start + math.prod(shape) * dtype.itemsize
    if size < end or (size > end and not tail):
        raise CorruptSampleError(
            f"{where}: cannot decode image (pixel data has {size - start} bytes for shape {shape} {dtype})"
        )
    return buf[start:end].view(dtype).reshape(shape), buf[end:]


def _general(data: bytes | memoryview, where: str, most: int, tail: bool) -> tuple[np.ndarray, Any]:
    image, rest = _decode_general(data, where, most)
    if len(rest) and not tail:
        raise CorruptSampleError(f"{where}: cannot decode image ({len(rest)} bytes after the .npy array)")
    return image, rest


def decode_image_fast(
    data: bytes | memoryview, where: str = "image", expected: Mapping[str, Any] | None = None
) -> np.ndarray:
    """Same result and checks as :func:`decode_image`, without ``np.load``'s copies and ``literal_eval``.

    The zstd frame is decompressed straight into a new writable numpy buffer of the size its header declares
    (imagecodecs' zstd binding), the fixed ``.npy`` header of our own writer is parsed with a strict regex and
    the pixels are a view into that buffer. Frames without a declared size, and any other header, take the
    general path of :func:`decode_image`. Frames written with a content checksum are verified by zstd.

    ``expected`` (a manifest row or record: shape and dtype) bounds the allocation: a frame that declares a
    different size is refused before anything is allocated (a decompression bomb costs nothing). Bytes after
    the image are an error here (a member with a guidance tail is read with :func:`decode_member`).
    """
    return _decode(data, where, expected, tail=False)[0]


def decode_member(
    data: bytes | memoryview, where: str = "image", expected: Mapping[str, Any] | None = None
) -> tuple[np.ndarray, Guidance | None]:
    """(image, guidance or None) of a member that may carry a guidance tail (module docstring), with the
    checks of :func:`decode_image_fast`; the tail may add at most :data:`MAX_TAIL_BYTES`."""
    image, rest = _decode(data, where, expected, tail=True)
    return image, parse_tail(rest, where)


def parse_tail(rest: Any, where: str) -> Guidance | None:
    """The :class:`Guidance` of the bytes after an image's ``.npy`` (None when there are none)."""
    raw = memoryview(rest).cast("B") if not isinstance(rest, np.ndarray) else memoryview(rest.data)
    if not len(raw):
        return None
    arrays: list[np.ndarray] = []
    pos = 0
    while pos < len(raw) and len(arrays) < 2:
        head = bytes(raw[pos : pos + 10])
        start = pos + 10 + int.from_bytes(head[8:10], "little") if len(head) == 10 else -1
        m = _TAIL_HEADER.fullmatch(bytes(raw[pos + 10 : start])) if head[:8] == b"\x93NUMPY\x01\x00" else None
        if m is None:
            raise CorruptSampleError(f"{where}: guidance after the image is not a centroid/size .npy array")
        shape = (int(m.group(2)), int(m.group(3))) if m.group(3) else (int(m.group(2)),)
        end = start + math.prod(shape) * 4
        if end > len(raw):
            raise CorruptSampleError(f"{where}: guidance array {shape} is truncated")
        arrays.append(np.frombuffer(raw[start:end], dtype=m.group(1).decode()).reshape(shape))
        pos = end
    centroids, sizes = arrays[0], (arrays[1] if len(arrays) > 1 else None)
    ok = centroids.ndim == 2 and centroids.shape[1] == 2 and centroids.dtype == np.dtype("<i4")
    if (
        pos != len(raw)
        or not ok
        or (sizes is not None and (sizes.shape != (len(centroids),) or sizes.dtype != np.dtype("<f4")))
    ):
        raise CorruptSampleError(
            f"{where}: guidance after the image is malformed (centroids {centroids.shape} {centroids.dtype}"
            f"{'' if sizes is None else f', sizes {sizes.shape} {sizes.dtype}'}, {len(raw) - pos} bytes left)"
        )
    return Guidance(centroids, sizes)
