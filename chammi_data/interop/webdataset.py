"""Reading a release's shards with the ``webdataset`` library.

Our tar shards are plain WebDataset shards (``<key>.json`` + ``<key>.npy.zst`` per cell; ``<key>.npy.lz4``
in a release built with ``--codec lz4``), so
``webdataset.WebDataset`` reads them locally, over HTTP or through ``pipe:`` commands. Its ``.decode()``
does not know compressed ``.npy``; :func:`wds_decoder` is the handler it needs:

    import webdataset as wds
    from chammi_data.interop.webdataset import wds_decoder, shard_urls

    ds = wds.WebDataset(shard_urls("https://host/release", "hpa")).decode(wds_decoder)
    for sample in ds:  # {"__key__", "json": dict (the cell's record), "npy.zst": (C, H, W) uint8 array}
        ...

The handler decodes with the same strict, bounded decoder as :func:`chammi_data.load` (every member codec:
zstd, lz4, none; frame checksum verified, no pickles, a frame larger than the limit or declaring no size
refused) and leaves every other member to webdataset. A CHAMMI-75 member also holds its image's cells after
the pixels: the handler returns the image; ``chammi_data.format.members.decode_member`` returns the cells too.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from chammi_data.format.members import decode_member
from chammi_data.store.storage import open_store


def wds_decoder(key: str, data: bytes) -> np.ndarray | None:
    """A ``webdataset`` decode handler: ``.npy.zst`` / ``.npy.lz4`` members -> (C, H, W) integer arrays;
    None for others."""
    if not key.lower().endswith(("npy.zst", "npy.lz4")):
        return None
    return decode_member(data, where=f"webdataset member {key}")[0]


def shard_urls(
    release: Any, source: str | None = None, storage_options: dict[str, Any] | None = None
) -> list[str]:
    """The full paths/URLs of a release's tar shards (all sources, or one), in ``release.json`` order."""
    from chammi_data.format.manifest import read_release_json

    store = open_store(release, storage_options)
    shards = sorted(read_release_json(store).get("shards") or {})
    if source is not None:
        shards = [s for s in shards if s.startswith(f"shards/{source}/")]
    return [store.path(s) for s in shards]
