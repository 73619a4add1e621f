"""Raw image headers, read without decoding pixels: shape and bit depth of PNG and TIFF files, and size
limits.

A small file can decode to a huge image (a few hundred KB of compressed TIFF or PNG can hold a 16000 x 16000
16-bit plane, half a gigabyte once decoded). Every source therefore reads each raw image's header first and
refuses an image over its size limit (options ``max_field_pixels`` / ``max_stack_voxels``) before a byte of
it is decoded; the caller lists it as skipped with the file, its dimensions and the limit.
"""

from __future__ import annotations

import math
import struct
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from chammi_data.store.storage import RemoteReadError

#: a raw image as the readers take it: a local path, or the object's bytes in a file object (remote inputs)
Source = str | Path | IO[bytes]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: PNG colour type -> samples per pixel (grey, RGB, palette, grey + alpha, RGBA)
_PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


class ImageTooLarge(ValueError):
    """An image whose header says it is over the size limit; the message names the file, its dimensions and
    the limit."""


@dataclass(frozen=True)
class ImageHeader:
    """What a raw image's header says: ``shape`` as it decodes ((H, W) for a grey plane, (H, W, S) with S
    samples per pixel, or a TIFF series' shape such as (Z, C, Y, X)) and ``bits`` per sample (8, 16, 32,
    64)."""

    shape: tuple[int, ...]
    bits: int

    @classmethod
    def of_series(cls, series: Any) -> ImageHeader:
        """The header of a ``tifffile.TiffPageSeries`` (read from its tags; no pixel is decoded)."""
        return cls(tuple(int(n) for n in series.shape), int(series.dtype.itemsize * 8))

    @property
    def size(self) -> int:
        """Number of pixels (voxels, samples) the image decodes to."""
        return math.prod(self.shape)

    def dims(self) -> str:
        return " x ".join(str(n) for n in self.shape)


def _head(source: Source, n: int) -> bytes:
    """The first ``n`` bytes of a file (a file object is left at its start)."""
    if isinstance(source, str | Path):
        with open(source, "rb") as fh:
            return fh.read(n)
    source.seek(0)
    head = source.read(n)
    source.seek(0)
    return head


def png_header(path: Source) -> ImageHeader:
    """Shape and bit depth from a PNG's IHDR chunk (the first 33 bytes); ``ValueError`` when it is no PNG."""
    return png_header_bytes(_head(path, 26))


def png_header_bytes(head: bytes) -> ImageHeader:
    """:func:`png_header` of a PNG's first bytes (at least 26: signature and IHDR), e.g. a remote file's."""
    if len(head) < 26 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise ValueError("not a PNG file (no PNG signature and IHDR chunk)")
    width, height = struct.unpack(">II", head[16:24])
    depth, colour = head[24], head[25]
    samples = _PNG_SAMPLES.get(colour, 1)
    shape = (height, width) if samples == 1 else (height, width, samples)
    return ImageHeader(shape, 16 if depth == 16 else 8)


def tiff_header(path: Source) -> ImageHeader:
    """Shape and bit depth of a TIFF's first series (what ``tifffile.imread`` decodes), from its tags only."""
    import tifffile

    with tifffile.TiffFile(path) as tf:
        header = ImageHeader.of_series(tf.series[0])
    if not isinstance(path, str | Path):
        path.seek(0)
    return header


def image_header(path: Source) -> ImageHeader:
    """The header of a PNG or TIFF file (a path, or a file object left at its start), recognised by content
    (not by extension); other formats through Pillow's lazy open, which reads the header only."""
    magic = _head(path, 8)
    if magic == _PNG_SIGNATURE:
        return png_header(path)
    if magic[:4] in _TIFF_MAGIC:
        return tiff_header(path)
    from PIL import Image

    with warnings.catch_warnings():  # the size limit is the caller's to apply, from the header
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            w, h = im.size
            bands = len(im.getbands())
            bits = 16 if im.mode.startswith("I;16") else 32 if im.mode in ("I", "F") else 8
    if not isinstance(path, str | Path):
        path.seek(0)
    return ImageHeader((h, w) if bands == 1 else (h, w, bands), bits)


def check_size(header: ImageHeader, limit: int, name: str, option: str) -> None:
    """Raise :class:`ImageTooLarge` when ``header`` decodes to more than ``limit`` pixels; ``name`` is the
    file as the message shows it, ``option`` the option that sets the limit."""
    if header.size > limit:
        raise ImageTooLarge(
            f"image too large: {name} is {header.dims()} ({header.size:,} pixels), over "
            f"{option} = {limit:,}; not decoded"
        )


class FieldMismatch(ValueError):
    """The channel files of one field do not fit together; ``key`` is the channel whose file to name."""

    def __init__(self, message: str, key: str):
        super().__init__(message)
        self.key = key


def check_field(
    planes: Mapping[str, tuple[int, ...]],
    depths: Mapping[str, int],
    names: Mapping[str, str],
    reference: str,
    allow_mixed_depth: bool,
    option: str,
) -> None:
    """Raise :class:`FieldMismatch` when the channel files of one field (by channel key: their plane shapes,
    bit depths and names as messages show them) differ in size from the ``reference`` channel (naming each
    differing file and its size), or mix bit depths while ``allow_mixed_depth`` is false (naming each file's
    depth; ``option`` is the option that allows it)."""
    size = {k: "x".join(map(str, s)) for k, s in planes.items()}
    odd = [k for k in planes if planes[k] != planes[reference]]
    if odd:
        raise FieldMismatch(
            f"channel sizes differ from {names[reference]} ({size[reference]}): "
            + ", ".join(f"{names[k]} is {size[k]}" for k in odd),
            odd[0],
        )
    if len(set(depths.values())) > 1 and not allow_mixed_depth:
        raise FieldMismatch(
            "mixed bit depths in one field: "
            + ", ".join(f"{names[k]} {d}-bit" for k, d in depths.items())
            + f" (option {option}: allow accepts them)",
            reference,
        )


def missing_files(
    files: Mapping[str, Any], names: Mapping[str, str], exists: Callable[[Any], bool] | None = None
) -> tuple[str, str] | None:
    """(message naming every missing file, key of the first) or None when all of ``files`` exist
    (``exists``: how to ask, default a local file check; a source's ``RawInput.is_file`` elsewhere)."""
    check = exists or (lambda f: Path(f).is_file())
    missing = [k for k, f in files.items() if not check(f)]
    if not missing:
        return None
    return f"missing channel file(s): {', '.join(names[k] for k in missing)}", missing[0]


class ItemSkip(Exception):
    """One item (an image, a cell) cannot be used; ``file`` names the file at fault, ``count`` the items it
    holds. Sources catch it per item and list it in the build report."""

    def __init__(self, reason: str, file: str, count: int = 1):
        super().__init__(reason)
        self.reason, self.file, self.count = reason, file, count


def read_or_none(store: Any, rel: str, what: str, key: str | None = None) -> bytes | None:
    """The bytes of ``rel`` of an input store (read at ``key`` when given: an escaped object name); None
    when it does not exist; :class:`ItemSkip` naming ``what`` and the file when it cannot be read."""
    try:
        return store.read_bytes(rel if key is None else key)
    except FileNotFoundError as exc:
        if getattr(exc, "missing", True):
            return None
        raise ItemSkip(f"unreadable {what} ({exc})", store.path(rel)) from None
    except (OSError, RemoteReadError) as exc:
        raise ItemSkip(f"unreadable {what} ({type(exc).__name__}: {exc})", store.path(rel)) from None
