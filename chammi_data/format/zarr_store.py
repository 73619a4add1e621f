"""The Zarr v3 side of a release: ``zarr/<source>.zarr`` with one array ``images`` (N, C, H, W).

One cell per chunk (1, C, H, W); chunks are grouped into zarr shards of ``cells_per_shard`` cells, so zarr
shard k holds exactly the cells of tar shard k. Zarr 3 rewrites a whole shard on every write, so two
writers touching one shard lose data: the release writer gives each zarr shard exactly one writer.

Each store is an OME-Zarr (NGFF 0.5) image, so ``ome-zarr``, ``ome-zarr-models`` and napari-ome-zarr open it.
Group attributes:

- ``ome``: ``{"version": "0.5", "multiscales": [...], "omero": {...}}``. One multiscale level, the array
  ``images`` itself, with axes ``cell`` (a custom axis: no ``type``, as NGFF allows for one non-space,
  non-time, non-channel axis), ``c`` (channel), ``y``, ``x`` (space, no unit: pixel sizes differ between
  and within sources) and a unit scale. ``omero`` has one entry per channel: ``label`` (the vocabulary
  name), ``color`` (hex RGB from ``vocab.CHANNEL_COLORS``), ``active`` and ``window``
  (``start``/``end``/``min``/``max`` over the dtype's range).
- ours: ``source`` and ``channels`` (names in image order). No per-cell list: row i of ``images`` is the
  source's manifest row with ``zarr_row == i`` (the manifest is the index; a list of 2.8 M ids in the group
  attributes would be printed whole by viewers such as napari's OME-Zarr plugin).

A variable source (CHAMMI-75) is a ``bioformats2raw.layout`` collection of such images, one per group of
images that share study, channels and size (:mod:`chammi_data.format.groups`): ``zarr/<source>.zarr/<g>``.

:func:`read_attrs` also returns ``omero`` at the top level (from ``ome.omero``), as stores written before
the OME-Zarr metadata had it.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np
import zarr
from numcodecs import Blosc
from zarr.codecs import BloscCodec, Crc32cCodec

from chammi_data.format.groups import GroupPlan, frame_groups, group_of_row
from chammi_data.format.vocab import CHANNEL_COLORS, to_names
from chammi_data.store.storage import ReleaseStore

ARRAY_NAME = "images"
#: Axis names of ``images`` (also its zarr ``dimension_names``, which OME-Zarr 0.5 requires to match).
AXES = ("cell", "c", "y", "x")
#: The OME-NGFF (OME-Zarr) version of the group metadata.
NGFF_VERSION = "0.5"
#: Blosc level for zarr chunks (zstd, byte shuffle). Measured on a 4 x 512 x 512 uint8 microscopy-like tile:
#: clevel 1 encodes 10x faster than clevel 5 (1.2 vs 12.4 ms) and is even slightly smaller (Blosc's block
#: size grows with the level, which does not pay on noisy 8-bit pixels); decoding is ~0.6 ms either way.
BLOSC_LEVEL = 1


def zarr_path(root: str | Path, source: str, group: int | None = None) -> Path:
    """``RELEASE/zarr/<source>.zarr``, or the image of ``group`` inside a variable source's collection."""
    path = Path(root) / "zarr" / f"{source}.zarr"
    return path if group is None else path / str(group)


def omero_metadata(channels: Sequence[str], dtype: np.dtype | str) -> dict[str, Any]:
    """OME-NGFF ``omero`` block: per channel label, colour and a display window over the dtype's range."""
    top = int(np.iinfo(np.dtype(dtype)).max)
    return {
        "channels": [
            {
                "label": name,
                "color": CHANNEL_COLORS[name],
                "active": True,
                "window": {"start": 0, "end": top, "min": 0, "max": top},
            }
            for name in to_names(channels)
        ],
        "rdefs": {"model": "color"},
    }


def ome_metadata(source: str, channels: Sequence[str], dtype: np.dtype | str) -> dict[str, Any]:
    """The ``ome`` group attribute (OME-NGFF 0.5): one multiscale level = ``images``, plus ``omero``."""
    axes: list[dict[str, str]] = [
        {"name": "cell"},
        {"name": "c", "type": "channel"},
        {"name": "y", "type": "space"},
        {"name": "x", "type": "space"},
    ]
    return {
        "version": NGFF_VERSION,
        "multiscales": [
            {
                "name": source,
                "axes": axes,
                "datasets": [
                    {
                        "path": ARRAY_NAME,
                        "coordinateTransformations": [{"type": "scale", "scale": [1.0] * len(AXES)}],
                    }
                ],
            }
        ],
        "omero": omero_metadata(channels, dtype),
    }


def create_images(
    root: str | Path,
    source: str,
    n_cells: int,
    channels: Sequence[str],
    hw: tuple[int, int],
    dtype: np.dtype | str,
    cells_per_shard: int,
    group: int | None = None,
) -> zarr.Array:
    """Create (overwrite) ``zarr/<source>.zarr`` with an empty ``images`` array of shape (N, C, H, W).

    The array is sharded with ``cells_per_shard`` cells per shard and one cell per chunk; the fill value
    is 0. Returns the array. Call once per source (per ``group`` of a variable source, inside the collection
    made by :func:`create_collection`), before any shard is written.
    """
    names = to_names(channels)
    if cells_per_shard < 1:
        raise ValueError(f"cells_per_shard must be >= 1, got {cells_per_shard}")
    c, (h, w) = len(names), hw
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.uint8), np.dtype(np.uint16)):
        raise ValueError(f"zarr images must be uint8 or uint16, got {dt}")
    name = source if group is None else f"{source} group {group}"
    node = zarr.open_group(str(zarr_path(root, source, group)), mode="w", zarr_format=3)
    node.attrs.update({"ome": ome_metadata(name, names, dt), "source": source, "channels": list(names)})
    return node.create_array(
        ARRAY_NAME,
        shape=(int(n_cells), c, int(h), int(w)),
        chunks=(1, c, int(h), int(w)),
        shards=(int(cells_per_shard), c, int(h), int(w)),
        dtype=dt,
        # crc32c after Blosc: every chunk carries a checksum that zarr verifies on read, so a flipped byte in
        # a chunk is an error instead of wrong pixels
        compressors=[
            BloscCodec(cname="zstd", clevel=BLOSC_LEVEL, shuffle="shuffle", typesize=dt.itemsize),
            Crc32cCodec(),
        ],
        fill_value=0,
        dimension_names=AXES,
    )


def create_collection(root: str | Path, source: str, groups: Sequence[dict[str, Any]] = ()) -> None:
    """Create (overwrite) ``zarr/<source>.zarr`` as the collection of a variable source's group images
    (``groups``: :meth:`chammi_data.format.groups.GroupPlan.attrs` of each; set again by
    :func:`set_groups` when the release is finalised)."""
    node = zarr.open_group(str(zarr_path(root, source)), mode="w", zarr_format=3)
    node.attrs.update(
        {
            "ome": {"version": NGFF_VERSION, "bioformats2raw.layout": 3},
            "source": source,
            "groups": list(groups),
        }
    )


def set_groups(root: str | Path, source: str, groups: Sequence[dict[str, Any]]) -> None:
    """Record a variable source's groups in its collection's attributes."""
    node = zarr.open_group(str(zarr_path(root, source)), mode="r+", zarr_format=3)
    node.attrs["groups"] = list(groups)


def group_cells_per_shard(root: str | Path, source: str) -> int:
    """Cells per zarr shard of a variable source (its groups' arrays all have the same)."""
    return cells_per_shard(open_images(root, source, group=0))


def record_groups(root: str | Path, source: str, part: Any) -> list[GroupPlan]:
    """A variable source's groups from its manifest rows (a DataFrame in zarr-row order), checked against the
    tar shards its rows are in (a group starts a new shard and its shards are consecutive), recorded in its
    zarr collection (called by ``writer.finalize_release``)."""
    per = group_cells_per_shard(root, source)
    groups = frame_groups(part.reset_index(drop=True), per)
    index = part["shard"].str.extract(r"-(\d+)\.tar$")[0].astype(int).to_numpy()
    expected = np.concatenate([[k for k, a, b, _ in g.shards(per) for _ in range(b - a)] for g in groups])
    if not np.array_equal(index, expected):
        bad = int(np.flatnonzero(index != expected)[0])
        raise ValueError(
            f"source {source}: row {bad} ({part['cell_id'].iloc[bad]}) is in tar shard {index[bad]}, but its "
            f"image group puts it in shard {expected[bad]} (a shard may not cross a group)"
        )
    set_groups(root, source, [g.attrs() for g in groups])
    return groups


def open_images(root: str | Path, source: str, mode: str = "r", group: int | None = None) -> zarr.Array:
    """Open ``zarr/<source>.zarr/images`` (of ``group`` for a variable source); a clear error when missing."""
    path = zarr_path(root, source, group)
    if not (path / "zarr.json").is_file():
        raise FileNotFoundError(f"no zarr store for source {source!r} at {path}")
    group = zarr.open_group(str(path), mode=mode, zarr_format=3)
    if ARRAY_NAME not in group:
        raise FileNotFoundError(f"zarr store {path} has no array {ARRAY_NAME!r}")
    arr = group[ARRAY_NAME]
    assert isinstance(arr, zarr.Array)
    return arr


def cells_per_shard(arr: zarr.Array) -> int:
    """Cells per zarr shard of an ``images`` array (its shard length along axis 0)."""
    shards = arr.shards
    return int(shards[0]) if shards is not None else int(arr.chunks[0])


def write_rows(root: str | Path, source: str, start: int, images: np.ndarray) -> None:
    """Write ``images`` (n, C, H, W) to rows [start, start + n), which must lie within ONE zarr shard.

    Keeping each write inside one shard is what makes concurrent writers of different shards safe.
    """
    arr = open_images(root, source, mode="r+")
    per = cells_per_shard(arr)
    n = images.shape[0]
    if n == 0:
        return
    if start % per != 0 or n > per:
        raise ValueError(
            f"zarr write of rows [{start}, {start + n}) of {source} does not start at and stay inside one "
            "zarr "
            f"shard of {per} cells (one writer per shard is required)"
        )
    if start + n > arr.shape[0]:
        raise ValueError(
            f"zarr write of rows [{start}, {start + n}) past the end of {source} images ({arr.shape[0]} rows)"
        )
    if tuple(images.shape[1:]) != tuple(arr.shape[1:]) or images.dtype != arr.dtype:
        raise ValueError(
            f"zarr write for {source}: images {images.shape[1:]} {images.dtype} do not match the array "
            f"{arr.shape[1:]} {arr.dtype}"
        )
    arr[start : start + n] = images


# --- pre-encoded shards
# -------------------------------------------------------------------------------------- A build compresses
# each cell's zarr chunk on the worker that made the cell (in parallel with everything else) and later writes
# a zarr shard by concatenating those chunks. The bytes are exactly what zarr-python writes for the same rows
# (tested): chunks in order (the in-shard chunk grid is (cells_per_shard, 1, 1, 1), whose Morton order is the
# row order), chunks equal to the fill value (all zero) left out as zarr does with
# ``write_empty_chunks=False``, then the index ((offset, nbytes) uint64 little-endian per chunk, 2**64-1 for
# an absent chunk) and its crc32c. The array's codec configuration is checked first: anything else -> error.

_ABSENT = np.uint64(2**64 - 1)


def _chunk_blosc(dtype: np.dtype | str) -> Blosc:
    """The numcodecs Blosc that zarr's ``BloscCodec`` of :func:`create_images` uses for one chunk."""
    return Blosc.from_config(
        {
            "cname": "zstd",
            "clevel": BLOSC_LEVEL,
            "shuffle": Blosc.SHUFFLE,
            "blocksize": 0,
            "typesize": np.dtype(dtype).itemsize,
        }
    )


def pixel_crc32c(image: np.ndarray) -> int:
    """crc32c of a (C, H, W) image's pixel bytes in C order, little-endian: the manifest's ``crc32c``, which
    binds a zarr row to its cell (hardware crc32c: ~0.07 ms per MB, a few % of a zarr read)."""
    arr = np.ascontiguousarray(image)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return int(google_crc32c.value(arr.reshape(-1).view(np.uint8)))


def decode_chunk(chunk: bytes, shape: tuple[int, ...], dtype: np.dtype | str) -> np.ndarray:
    """The image of one :func:`encode_chunk` output (``b""``: the all-zero cell); checks its crc32c."""
    dt = np.dtype(dtype)
    if not chunk:
        return np.zeros(shape, dt)
    body, crc = chunk[:-4], int.from_bytes(chunk[-4:], "little")
    if google_crc32c.value(body) != crc:
        raise ValueError("zarr chunk: stored and computed crc32c differ")
    out = np.frombuffer(_chunk_blosc(dt).decode(body), dtype=dt.newbyteorder("<"))
    return out.reshape(shape).astype(dt, copy=False)


def encode_chunk(image: np.ndarray) -> bytes:
    """One cell (C, H, W) as its zarr chunk bytes (little-endian, Blosc, then the crc32c of those bytes as 4
    little-endian bytes, as zarr's ``crc32c`` codec writes it); ``b""`` for an all-zero cell, which zarr
    stores as an absent chunk (it reads back as the fill value 0)."""
    arr = np.ascontiguousarray(image)
    if not arr.any():
        return b""
    packed = bytes(_chunk_blosc(arr.dtype).encode(arr.astype(arr.dtype.newbyteorder("<"), copy=False)))
    return packed + google_crc32c.value(packed).to_bytes(4, "little")


def has_chunk_checksums(arr: zarr.Array) -> bool:
    """True when each chunk of an ``images`` array carries a crc32c that zarr verifies on read (stores written
    before chunk checksums have none: readers then check the pixels' sha256 instead)."""
    if isinstance(arr, GroupedImages):
        return all(has_chunk_checksums(arr.array(g)) for g in range(len(arr.groups)))
    codecs = json.loads(json.dumps(arr.metadata.to_dict()["codecs"]))
    inner = codecs[0].get("configuration", {}).get("codecs", []) if codecs else []
    return any(c.get("name") == "crc32c" for c in inner)


def _expected_codecs(dtype: np.dtype, per: int, chw: tuple[int, ...]) -> list[dict[str, Any]]:
    inner_bytes: dict[str, Any] = {"name": "bytes"}
    if dtype.itemsize > 1:
        inner_bytes["configuration"] = {"endian": "little"}
    return [
        {
            "name": "sharding_indexed",
            "configuration": {
                "chunk_shape": (1, *chw),
                "codecs": (
                    inner_bytes,
                    {
                        "name": "blosc",
                        "configuration": {
                            "typesize": dtype.itemsize,
                            "cname": "zstd",
                            "clevel": BLOSC_LEVEL,
                            "shuffle": "shuffle",
                            "blocksize": 0,
                        },
                    },
                    {"name": "crc32c"},
                ),
                "index_codecs": (
                    {"name": "bytes", "configuration": {"endian": "little"}},
                    {"name": "crc32c"},
                ),
                "index_location": "end",
            },
        }
    ]


def write_encoded_shard(
    root: str | Path, source: str, shard_index: int, chunks: Sequence[bytes], group: int | None = None
) -> list[int]:
    """Write zarr shard ``shard_index`` of ``source`` (of its ``group``'s array for a variable source) from
    :func:`encode_chunk` outputs of its rows, in order; returns each row's :func:`pixel_crc32c`, computed
    from the chunk as stored (decoded again: the manifest then binds every zarr row to the pixels this shard
    really holds).

    One writer per shard, as for :func:`write_rows`; the shard file is written to a temp file and renamed.
    """
    arr = open_images(root, source, group=group)
    per = cells_per_shard(arr)
    start = shard_index * per
    n = len(chunks)
    if n == 0 or n > per or start + n > arr.shape[0]:
        raise ValueError(
            f"zarr shard {shard_index} of {source}: {n} chunks do not fit rows [{start}, {start + per}) "
            f"of an array with {arr.shape[0]} rows"
        )
    expected = _expected_codecs(np.dtype(arr.dtype), per, tuple(arr.shape[1:]))
    got = json.loads(json.dumps(arr.metadata.to_dict()["codecs"]))  # tuples -> lists, as in zarr.json
    if got != json.loads(json.dumps(expected)) or tuple(arr.shards or ()) != (per, *arr.shape[1:]):
        raise ValueError(
            f"zarr store of {source} does not have the layout create_images makes; cannot write "
            f"pre-encoded chunks into it (codecs {got})"
        )
    path = zarr_path(root, source, group) / ARRAY_NAME / arr.metadata.encode_chunk_key((shard_index, 0, 0, 0))
    crcs = [pixel_crc32c(decode_chunk(c, tuple(arr.shape[1:]), arr.dtype)) for c in chunks]
    if not any(chunks):  # every cell equals the fill value: zarr keeps no shard file at all
        path.unlink(missing_ok=True)
        return crcs
    index = np.full((per, 2), _ABSENT, dtype="<u8")
    offset = 0
    for i, chunk in enumerate(chunks):
        if chunk:
            index[i] = (offset, len(chunk))
            offset += len(chunk)
    index_bytes = index.tobytes()
    crc = np.array([google_crc32c.value(index_bytes)], dtype="<u4").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
            fh.write(index_bytes)
            fh.write(crc)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return crcs


def read_attrs(root: str | Path, source: str, group: int | None = None) -> dict[str, Any]:
    """Group attributes of ``zarr/<source>.zarr`` (or of a variable source's ``group``): ``ome``, ``source``,
    ``channels`` (``groups`` for a collection), and ``omero`` (the ``ome.omero`` block, also at the top level
    for readers of older stores)."""
    path = zarr_path(root, source, group)
    if not (path / "zarr.json").is_file():
        raise FileNotFoundError(f"no zarr store for source {source!r} at {path}")
    attrs = dict(zarr.open_group(str(path), mode="r", zarr_format=3).attrs)
    ome = attrs.get("ome")
    if isinstance(ome, dict) and "omero" in ome:
        attrs.setdefault("omero", ome["omero"])
    return attrs


def read_row(root: str | Path, source: str, row: int) -> np.ndarray:
    """One cell's (C, H, W) image from zarr."""
    arr = open_images(root, source)
    if not 0 <= row < arr.shape[0]:
        raise IndexError(f"zarr row {row} outside {source} images with {arr.shape[0]} rows")
    return np.asarray(arr[row])


# --- reading at any location
# ----------------------------------------------------------------------------------
def open_zarr_group(store: ReleaseStore, source: str) -> Any:
    """The group ``zarr/<source>.zarr`` of a release at any location, read-only."""
    if store.is_local:
        path = zarr_path(store.local_root, source)
        if not (path / "zarr.json").is_file():
            raise FileNotFoundError(f"no zarr store for source {source!r} at {path}")
        return zarr.open_group(str(path), mode="r", zarr_format=3)
    rel = f"zarr/{source}.zarr"
    try:
        remote = zarr.storage.FsspecStore.from_url(
            store.path(rel), storage_options=store._fs_options(), read_only=True
        )
        return zarr.open_group(store=remote, mode="r", zarr_format=3)
    except (FileNotFoundError, KeyError) as exc:
        raise FileNotFoundError(f"no zarr store for source {source!r} at {store.path(rel)} ({exc})") from None


class GroupedImages:
    """A variable source's group images read by source row: ``images[row]`` is the (C, H, W) image of the
    manifest row with that ``zarr_row``, from the array of its group (:mod:`chammi_data.format.groups`)."""

    def __init__(self, collection: Any) -> None:
        self.collection = collection
        self.groups = list(collection.attrs.get("groups") or [])
        self._arrays: dict[int, Any] = {}
        self.shape = (sum(int(g["rows"]) for g in self.groups),)

    def array(self, g: int) -> Any:
        """The ``images`` array of the g-th group."""
        if g not in self._arrays:
            self._arrays[g] = self.collection[f"{self.groups[g]['path']}/{ARRAY_NAME}"]
        return self._arrays[g]

    def __getitem__(self, row: int) -> np.ndarray:
        g, r = group_of_row(self.groups, int(row))
        return self.array(g)[r]


def open_zarr_images(store: ReleaseStore, source: str) -> Any:
    """The ``images`` array of ``zarr/<source>.zarr`` of a release at any location, read-only (for a
    variable source a :class:`GroupedImages` over its groups' arrays)."""
    group = open_zarr_group(store, source)
    if "groups" in group.attrs:
        return GroupedImages(group)
    if ARRAY_NAME not in group:
        raise FileNotFoundError(
            f"zarr store of {source!r} at {store.path(f'zarr/{source}.zarr')} has no array {ARRAY_NAME!r}"
        )
    return group[ARRAY_NAME]
