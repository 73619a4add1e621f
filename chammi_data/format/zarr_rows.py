"""Reading a cell from a release's zarr store, bound to its manifest row as firmly as a tar read.

A zarr chunk's crc32c proves that its bytes are intact, not that they are the bytes of the cell the manifest
puts at that row; and a chunk that is absent reads as the array's ``fill_value``. So without more, a deleted
shard file reads as zeros, two swapped shard files as another cell's pixels and an edited ``fill_value`` as
constant images, all without an error. Here every row read is checked against the manifest (itself bound to
``release.json`` by its sha256):

- the pixels' crc32c (:func:`chammi_data.format.zarr_store.pixel_crc32c`, C order, little-endian) must equal
  the row's ``crc32c`` column, which the writer computed from the chunk it stored. One hardware crc32c pass,
  ~0.07 ms per MB: 1-3% of a zarr read (``benchmarks/results/loader.md``).
- the array's ``fill_value`` must be the 0 it was written with, so an absent chunk (zarr's way of storing an
  all-zero cell) can only read as the zeros the crc32c expects.
- the shape and dtype must be the row's; ``verify=True`` also checks the pixels' sha256 (a forger who rewrote
  the crc32c column and ``release.json`` together), and so do reads of a manifest without the crc32c column
  (releases written before it).

An error names the store, the row and the cell, and says what it found (a missing shard file, an edited
``fill_value``, another cell's pixels).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from chammi_data.format.codec import CorruptSampleError
from chammi_data.format.groups import group_of_row
from chammi_data.format.shards import check_image
from chammi_data.format.zarr_store import ARRAY_NAME, GroupedImages, open_zarr_images, pixel_crc32c
from chammi_data.store.storage import ReleaseStore, require_store


class ZarrRows:
    """Rows of one source's ``zarr/<source>.zarr`` ``images`` array, each checked against its manifest row
    (see the module docstring). Opened lazily: safe to pickle into DataLoader workers before first use."""

    def __init__(self, store: ReleaseStore, source: str):
        self.store = require_store(store, "ZarrRows")
        self.source = source
        self.name = self.store.path(f"zarr/{source}.zarr")
        self._arr: Any = None

    @property
    def array(self) -> Any:
        """The zarr ``images`` array (opened on first use)."""
        if self._arr is None:
            self._arr = open_zarr_images(self.store, self.source)
        return self._arr

    def where(self, row: Mapping[str, Any]) -> str:
        """How errors name a row: the store, the zarr row and the cell."""
        return f"{self.name}: row {int(row['zarr_row'])} (cell {row['cell_id']!r})"

    def read(self, row: Mapping[str, Any], verify: bool | None = None) -> np.ndarray:
        """The (C, H, W) image of manifest ``row`` (``zarr_row``, ``cell_id``, ``crc32c``, shape, dtype,
        ``sha256``); raises :class:`CorruptSampleError` naming store, row and cell when it is not the row's
        cell. ``verify``: True also checks the sha256."""
        where = self.where(row)
        arr, index = self.array, int(row["zarr_row"])
        if isinstance(arr, GroupedImages):  # a variable source: the row's group array, the row within it
            g, index = group_of_row(arr.groups, index)
            arr = arr.array(g)
        fill = arr.metadata.fill_value
        if fill != 0:
            raise CorruptSampleError(
                f"{where}: the array's fill_value {fill} is not the 0 it was written with (zarr.json "
                "edited): absent chunks would read as constant images"
            )
        if not 0 <= index < arr.shape[0]:
            raise CorruptSampleError(f"{where}: outside the {arr.shape[0]} rows of the array")
        try:
            image = np.asarray(arr[index])
        except Exception as exc:  # zarr's crc32c codec refuses a changed chunk; Blosc a truncated one
            raise CorruptSampleError(f"{where}: unreadable chunk ({type(exc).__name__}: {exc})") from None
        expected = int(row.get("crc32c", -1))
        if expected >= 0:
            got = pixel_crc32c(image)
            if got != expected:
                raise CorruptSampleError(
                    f"{where}: not this cell's pixels (crc32c {got:08x}, the manifest records "
                    f"{expected:08x}): {self._why(int(row['zarr_row']))}"
                )
        check_image(image, row, where, verify=bool(verify) or expected < 0)
        return image

    def _why(self, index: int) -> str:
        """What is wrong with the shard of row ``index``, as far as one look can tell."""
        arr = self.array
        if isinstance(arr, GroupedImages):
            return "its group's zarr shard file holds other pixels at this row, or is missing"
        shards = arr.shards or arr.chunks
        key = arr.metadata.encode_chunk_key((index // int(shards[0]), *([0] * (arr.ndim - 1))))
        rel = f"zarr/{self.source}.zarr/{ARRAY_NAME}/{key}"
        if not self.store.exists(rel):
            return f"its zarr shard file {rel} is missing (its cells would read as the fill value)"
        return (
            f"its zarr shard file {rel} holds other pixels at this row (shard files swapped, replaced or "
            "rewritten, or the row's chunk is absent from the shard)"
        )
