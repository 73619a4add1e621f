"""The on-disk encoding of one cell image inside a tar shard: a zstd-compressed ``.npy``.

Member names are ``<key>.npy.zst`` and ``<key>.json``. Decoding never unpickles (``allow_pickle=False``)
and checks dtype and rank, so a hostile or corrupted member gives a clear error instead of an object.
"""

from __future__ import annotations

import io

import numpy as np
import zstandard

#: zstd level used for images: on microscopy-like 8-bit tiles higher levels barely shrink the members for many
#: times the encode time (benchmarks/results/loader.md), and decoding speed does not depend on the level.
ZSTD_LEVEL = 3
IMAGE_SUFFIX = ".npy.zst"
JSON_SUFFIX = ".json"
_ALLOWED_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))


class CorruptSampleError(ValueError):
    """An image or record in a shard could not be decoded; the message names the shard and key."""


def encode_image(image: np.ndarray, level: int = ZSTD_LEVEL) -> bytes:
    """(C, H, W) uint8/uint16 array -> zstd-compressed ``.npy`` bytes (deterministic for equal arrays)."""
    arr = np.ascontiguousarray(image)
    if arr.ndim != 3 or arr.dtype not in _ALLOWED_DTYPES:
        raise ValueError(f"image must be (C, H, W) uint8/uint16, got shape {arr.shape} dtype {arr.dtype}")
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    # A fresh compressor per call, no threads, no content-size ambiguity: identical input -> identical bytes.
    return zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=True).compress(
        buf.getvalue()
    )


def decode_image(data: bytes, where: str = "image", max_bytes: int = 1 << 28) -> np.ndarray:
    """zstd-compressed ``.npy`` bytes -> (C, H, W) array. ``where`` names the shard/key in errors.

    At most ``max_bytes`` are decompressed, whether or not the frame declares its size."""
    try:
        declared = zstandard.frame_content_size(data)
        if declared > max_bytes:
            raise ValueError(f"zstd frame declares {declared} bytes, more than the {max_bytes}-byte limit")
        raw = zstandard.ZstdDecompressor().decompress(data, max_output_size=max_bytes)
        arr = np.load(io.BytesIO(raw), allow_pickle=False)
    except Exception as exc:  # zstd errors, truncated npy, object arrays (pickle refused)
        raise CorruptSampleError(f"{where}: cannot decode image ({type(exc).__name__}: {exc})") from None
    if arr.ndim != 3 or arr.dtype not in _ALLOWED_DTYPES:
        raise CorruptSampleError(
            f"{where}: expected a (C, H, W) uint8/uint16 array, got shape {arr.shape} dtype {arr.dtype}"
        )
    return arr
