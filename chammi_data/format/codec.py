"""The on-disk encoding of one cell image inside a tar shard: a compressed ``.npy`` frame with a checksum.

A member holds the ``.npy`` bytes (``np.save`` of the (C, H, W) uint8/uint16 array) in one frame that
declares its decoded size and carries a checksum of it. Three member codecs (``chammi-build --codec``):

====== ===================== ============================================================================
codec  member name           frame
====== ===================== ============================================================================
zstd   ``<key>.npy.zst``     zstd level 3 (the default; releases without a recorded codec are zstd)
lz4    ``<key>.npy.lz4``     an LZ4 frame: faster to decode, larger on disk; xxh32 content checksum
none   ``<key>.npy.zst``     the ``.npy`` bytes uncompressed, stored in the raw blocks of a zstd frame:
                             any zstd decoder reads it (a copy), and the frame still declares its size and
                             carries zstd's xxh64 content checksum, so reads stay verified
====== ===================== ============================================================================

Readers tell the frame kind from its magic number, so every reader reads every codec. Decoding never
unpickles (``allow_pickle=False``), checks dtype and rank, and never allocates more than the frame declares
(a frame that does not declare its decoded size is refused: a chammi member always does).

**Guidance tail** (images of a variable source, CHAMMI-75): the frame's decoded bytes are the image's
``.npy`` followed by the ``.npy`` of its cell centroids, int32 (N, 2) as (x = column, y = row), and, when the
source gave them, the ``.npy`` of the cells' areas in pixels, float32 (N,) (:func:`guidance_tail`,
:func:`parse_tail`; ``members.decode_member`` reads both). A plain ``.npy`` reader (``np.load``, webdataset)
reads the image and ignores the rest; our readers get the cells from the same bytes they read for the pixels,
so a guided crop costs no extra request in either stream order, and the manifest stays one short row per
image. An image without cells has an empty (0, 2) centroid array.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import imagecodecs
import numpy as np
import zstandard

#: zstd level used for images: on microscopy-like 8-bit tiles higher levels barely shrink the members for many
#: times the encode time (benchmarks/results/loader.md), and decoding speed does not depend on the level.
ZSTD_LEVEL = 3
#: The member codecs a build can write (``chammi-build --codec``); the first is the default.
CODECS = ("zstd", "lz4", "none")
DEFAULT_CODEC = "zstd"
IMAGE_SUFFIX = ".npy.zst"
LZ4_SUFFIX = ".npy.lz4"
#: The image member's name suffix per codec.
IMAGE_SUFFIXES = {"zstd": IMAGE_SUFFIX, "lz4": LZ4_SUFFIX, "none": IMAGE_SUFFIX}
JSON_SUFFIX = ".json"
_ALLOWED_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
LZ4_MAGIC = b"\x04\x22\x4d\x18"
#: zstd's largest block (raw blocks of a ``none`` member are at most this long)
_ZSTD_BLOCK = 1 << 17


#: most cells a guidance tail may list, and the most bytes a tail may add to a member's decoded size
MAX_GUIDANCE_CELLS = 1 << 16
MAX_TAIL_BYTES = MAX_GUIDANCE_CELLS * 12 + 2 * 4096
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
        arrays.append(np.frombuffer(raw[start:end], dtype=m.group(1).decode()).reshape(shape).copy())
        pos = end
    centroids, sizes = arrays[0], (arrays[1] if len(arrays) > 1 else None)
    ok = centroids.ndim == 2 and centroids.shape[1] == 2 and centroids.dtype == np.dtype("<i4")
    if sizes is not None and (sizes.shape != (len(centroids),) or sizes.dtype != np.dtype("<f4")):
        ok = False
    if pos != len(raw) or not ok:
        extra = "" if sizes is None else f", sizes {sizes.shape} {sizes.dtype}"
        raise CorruptSampleError(
            f"{where}: guidance after the image is malformed (centroids {centroids.shape} {centroids.dtype}"
            f"{extra}, {len(raw) - pos} bytes left)"
        )
    return Guidance(centroids, sizes)


@dataclass(frozen=True)
class Frame:
    """What a member's frame header says: ``kind`` (``zstd`` | ``lz4``), the decoded size it declares (-1:
    none declared) and whether it carries a content checksum."""

    kind: str
    content_size: int
    has_checksum: bool


def frame_info(data: bytes | memoryview) -> Frame:
    """The header of a zstd or LZ4 frame; ValueError for anything else (no magic, a truncated header)."""
    head = bytes(data[:4])
    if head == ZSTD_MAGIC:
        try:
            params = zstandard.get_frame_parameters(data)
        except zstandard.ZstdError as exc:
            raise ValueError(f"bad zstd frame header ({exc})") from None
        size = params.content_size
        return Frame("zstd", -1 if size == zstandard.CONTENTSIZE_UNKNOWN else int(size), params.has_checksum)
    if head == LZ4_MAGIC:
        if len(data) < 7:
            raise ValueError("truncated LZ4 frame header")
        flg = data[4]
        if flg >> 6 != 1 or flg & 0x03:
            raise ValueError(f"unsupported LZ4 frame flags {flg:#04x} (version, dictionary or reserved bits)")
        if flg & 0x08:
            if len(data) < 15:
                raise ValueError("truncated LZ4 frame header")
            size = int.from_bytes(bytes(data[6:14]), "little")
        else:
            size = -1
        return Frame("lz4", size, bool(flg & 0x04))
    raise ValueError(f"not a zstd or LZ4 frame (starts with {head.hex() or 'nothing'})")


def member_suffix(data: bytes | memoryview) -> str:
    """The name suffix of an encoded image member (``.npy.lz4`` for an LZ4 frame, else ``.npy.zst``)."""
    return LZ4_SUFFIX if bytes(data[:4]) == LZ4_MAGIC else IMAGE_SUFFIX


def member_codec(data: bytes | memoryview) -> str:
    """Which codec wrote a member: ``lz4``, ``none`` (a zstd frame whose every block is raw) or ``zstd``."""
    frame = frame_info(data)
    if frame.kind == "lz4":
        return "lz4"
    pos = 4 + _zstd_header_size(data)
    while pos + 3 <= len(data):
        block = int.from_bytes(bytes(data[pos : pos + 3]), "little")
        if (block >> 1) & 3 != 0:
            return "zstd"
        pos += 3 + (block >> 3)
        if block & 1:
            return "none"
    return "zstd"


def codec_matches(data: bytes | memoryview, codec: str) -> bool:
    """Whether a member is what a release of ``codec`` writes: an LZ4 frame for ``lz4``, a zstd frame for
    ``zstd`` (incompressible blocks may be stored raw) and a zstd frame of raw blocks only for ``none``."""
    try:
        kind = frame_info(data).kind
    except ValueError:
        return False
    if codec == "lz4":
        return kind == "lz4"
    return kind == "zstd" and (codec != "none" or member_codec(data) == "none")


def _zstd_header_size(data: bytes | memoryview) -> int:
    """Bytes of a zstd frame header after the magic (descriptor, window, dictionary id, content size)."""
    fhd = data[4]
    single = (fhd >> 5) & 1
    fcs = {0: single, 1: 2, 2: 4, 3: 8}[fhd >> 6]
    return 1 + (0 if single else 1) + {0: 0, 1: 1, 2: 2, 3: 4}[fhd & 3] + fcs


def _stored_zstd_frame(raw: bytes) -> bytes:
    """``raw`` in a zstd frame of raw (uncompressed) blocks, with its content size and xxh64 checksum.

    The checksum is the low 32 bits of xxh64(raw), which zstd computes whatever it does with the blocks: we
    take it from a frame compressed at zstd's fastest level (no xxhash dependency for one hash per cell)."""
    checksum = zstandard.ZstdCompressor(level=-5, write_checksum=True).compress(raw)[-4:]
    out = bytearray(ZSTD_MAGIC)
    out.append(0b11100100)  # 8-byte content size, single segment, checksum, no dictionary
    out += len(raw).to_bytes(8, "little")
    if not raw:
        out += (1).to_bytes(3, "little")  # one empty last raw block
    for start in range(0, len(raw), _ZSTD_BLOCK):
        block = raw[start : start + _ZSTD_BLOCK]
        last = start + _ZSTD_BLOCK >= len(raw)
        out += ((len(block) << 3) | int(last)).to_bytes(3, "little")  # type 0 = raw
        out += block
    out += checksum
    return bytes(out)


def encode_image(
    image: np.ndarray, level: int = ZSTD_LEVEL, codec: str = DEFAULT_CODEC, guidance: Guidance | None = None
) -> bytes:
    """(C, H, W) uint8/uint16 array [+ its guidance tail] -> one member of ``codec`` (see the module
    docstring); deterministic for equal arrays. ``level`` is zstd's."""
    if codec not in CODECS:
        raise ValueError(f"unknown member codec {codec!r}; valid: {', '.join(CODECS)}")
    arr = np.ascontiguousarray(image)
    if arr.ndim != 3 or arr.dtype not in _ALLOWED_DTYPES:
        raise ValueError(f"image must be (C, H, W) uint8/uint16, got shape {arr.shape} dtype {arr.dtype}")
    raw = _npy(arr) + (guidance_tail(guidance) if guidance is not None else b"")
    if codec == "lz4":
        return bytes(imagecodecs.lz4f_encode(raw, contentchecksum=True))
    if codec == "none":
        return _stored_zstd_frame(raw)
    # A fresh compressor per call, no threads, no content-size ambiguity: identical input -> identical bytes.
    return zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=True).compress(raw)


def decode_frame(
    data: bytes | memoryview, frame: Frame, alloc: Callable[[int], np.ndarray] | None = None
) -> np.ndarray:
    """The decoded bytes of the frame ``data`` (described by ``frame``, which must declare its size) as a
    uint8 array of exactly that size, in a buffer from ``alloc(nbytes)`` (default ``np.empty``). The decoder
    verifies the content checksum; a frame holding more or less than it declares is an error.

    An LZ4 decoder stops silently when its output is full (never reaching the checksum), so LZ4 frames get
    one spare byte: a frame that holds more than it declares then fills it and is refused."""
    size = frame.content_size
    if size < 0:
        raise ValueError("the frame does not declare its decoded size (a chammi member always does)")
    spare = 1 if frame.kind == "lz4" else 0
    buf = (alloc or _empty)(size + spare)
    got = len(imagecodecs.lz4f_decode(data, out=buf) if spare else imagecodecs.zstd_decode(data, out=buf))
    if got != size:
        raise ValueError(
            f"the frame decodes to {'more' if got > size else 'fewer'} than the {size} bytes it declares"
        )
    return buf[:size] if spare else buf


def _empty(nbytes: int) -> np.ndarray:
    return np.empty(nbytes, np.uint8)


def decode_image(data: bytes | memoryview, where: str = "image", max_bytes: int = 1 << 28) -> np.ndarray:
    """One member (any codec) -> (C, H, W) array. ``where`` names the shard/key in errors.

    The frame must declare its decoded size, at most ``max_bytes``; exactly that much is allocated."""
    try:
        frame = frame_info(data)
        if frame.content_size > max_bytes:
            raise ValueError(
                f"frame declares {frame.content_size} bytes, more than the {max_bytes}-byte limit"
            )
        arr = np.load(io.BytesIO(decode_frame(data, frame).data), allow_pickle=False)
    except Exception as exc:  # zstd/lz4 errors, truncated npy, object arrays (pickle refused)
        raise CorruptSampleError(f"{where}: cannot decode image ({type(exc).__name__}: {exc})") from None
    if arr.ndim != 3 or arr.dtype not in _ALLOWED_DTYPES:
        raise CorruptSampleError(
            f"{where}: expected a (C, H, W) uint8/uint16 array, got shape {arr.shape} dtype {arr.dtype}"
        )
    return arr
