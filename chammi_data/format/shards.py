"""Read WebDataset tar shards safely: a strict ustar parser, no extraction, no pickles.

Python's ``tarfile`` treats a corrupted header in the middle of a file as the end of the archive, which
would silently drop samples; so we parse the (simple) ustar format ourselves and fail loudly. Only plain
files named ``<key>.json`` / ``<key>.npy.zst`` are accepted: absolute paths, ``..``, directories, links,
devices, fifos, pax/GNU extension headers, keys with dots, bad header checksums and truncated members are
errors (:class:`ShardFormatError`) naming the shard and the member/key. Nothing is written to disk.

:func:`iter_samples` yields the usual sample dict (``release_format.make_sample``) with the (C, H, W) integer
array as ``image``; its ``meta`` is the record's provenance plus ``train_test_split``, ``tasks`` and
``shard``.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from chammi_data.format.codec import (
    IMAGE_SUFFIX,
    JSON_SUFFIX,
    LZ4_SUFFIX,
    CorruptSampleError,
    Guidance,
    frame_info,
)
from chammi_data.format.members import (  # noqa: F401 (decode_image_fast, decode_member: re-exported for readers)
    MAX_IMAGE_BYTES,
    MAX_RECORD_BYTES,
    add_guidance,
    decode_image_fast,
    decode_member,
    decode_row,
)
from chammi_data.format.release_format import CELL_ID_PATTERN, expected_shape, make_sample
from chammi_data.format.schema import image_checksum
from chammi_data.store.fdpool import MAPS, POOL
from chammi_data.store.storage import ReleaseStore, RemoteObjectError, open_store, require_store

BLOCK = 512
#: member extensions: the record, then the image (zstd and ``none`` members: npy.zst; lz4 members: npy.lz4)
_EXTS = (JSON_SUFFIX.lstrip("."), IMAGE_SUFFIX.lstrip("."), LZ4_SUFFIX.lstrip("."))
_IMAGE_EXTS = _EXTS[1:]
_TYPE_NAMES = {
    b"1": "hard link",
    b"2": "symbolic link",
    b"3": "character device",
    b"4": "block device",
    b"5": "directory",
    b"6": "fifo",
    b"7": "contiguous file",
    b"x": "pax extended header",
    b"g": "pax global header",
    b"L": "GNU long name",
    b"K": "GNU long link name",
    b"S": "GNU sparse file",
}


class ShardFormatError(CorruptSampleError):
    """A shard is truncated, corrupted, or holds a member we refuse to read; names the shard and member."""


@dataclass(frozen=True)
class Member:
    """One regular-file member: its name, key, extension, data offset in the shard and data size (bytes)."""

    name: str
    key: str
    ext: str
    offset: int
    size: int


def _octal(field: bytes, shard: str, what: str, name: str) -> int:
    text = field.rstrip(b"\0 ").lstrip(b" ")
    if not text:
        return 0
    if field[:1] and field[0] & 0x80:
        raise ShardFormatError(f"{shard}: member {name!r}: base-256 {what} field is not supported")
    try:
        return int(text, 8)
    except ValueError:
        raise ShardFormatError(f"{shard}: member {name!r}: corrupted {what} field {field!r}") from None


def _parse_header(block: bytes, shard: str, pos: int) -> tuple[str, int, bytes]:
    """(name, size, typeflag) of a 512-byte ustar header at byte ``pos``; checks checksum and magic."""
    raw_name = block[0:100].split(b"\0", 1)[0]
    prefix = block[345:500].split(b"\0", 1)[0]
    name_b = prefix + b"/" + raw_name if prefix else raw_name
    name = name_b.decode("utf-8", errors="replace")
    stored = _octal(block[148:156], shard, "checksum", name)
    computed = sum(block[:148]) + 8 * 32 + sum(block[156:])
    if stored != computed:
        raise ShardFormatError(
            f"{shard}: corrupted tar header at byte {pos} (member {name!r}): checksum mismatch"
        )
    if block[257:262] != b"ustar":
        raise ShardFormatError(f"{shard}: member {name!r} at byte {pos}: not a ustar header")
    size = _octal(block[124:136], shard, "size", name)
    return name, size, block[156:157]


def _check_name(name: str, typeflag: bytes, shard: str) -> tuple[str, str]:
    """Refuse anything but a flat regular file ``<key>.<json|npy.zst>``; return (key, ext)."""
    if typeflag not in (b"0", b"\0"):
        kind = _TYPE_NAMES.get(typeflag, f"type {typeflag!r}")
        raise ShardFormatError(f"{shard}: member {name!r} is a {kind}; only regular files are allowed")
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise ShardFormatError(f"{shard}: member {name!r} has an absolute path")
    parts = name.replace("\\", "/").split("/")
    if ".." in parts:
        raise ShardFormatError(f"{shard}: member {name!r} contains '..'")
    if len(parts) > 1:
        raise ShardFormatError(f"{shard}: member {name!r} is in a folder; members must be flat <key>.<ext>")
    key, _, ext = name.partition(".")
    if key and CELL_ID_PATTERN.fullmatch(key) is None:
        raise ShardFormatError(
            f"{shard}: member {name!r}: key {key!r} is not a valid cell id (letters, digits, "
            f"'_' and '-' only)"
        )
    if not key or ext not in _EXTS:
        raise ShardFormatError(
            f"{shard}: member {name!r} (key {key!r}): unexpected extension {ext!r}; members are <key>.json "
            "and <key>.npy.zst (or <key>.npy.lz4) and keys contain no dots"
        )
    return key, ext


def iter_members(fh: BinaryIO, shard: str, read_data: bool = True) -> Iterator[tuple[Member, bytes | None]]:
    """Yield ``(Member, data)`` for every member of an open shard (data None when ``read_data`` is False)."""
    pos = 0
    while True:
        block = fh.read(BLOCK)
        if not block:
            raise ShardFormatError(
                f"{shard}: truncated: ends at byte {pos} without the end-of-archive marker"
            )
        if len(block) < BLOCK:
            raise ShardFormatError(f"{shard}: truncated tar header at byte {pos}")
        if block == b"\0" * BLOCK:
            return  # end-of-archive marker (a second zero block and padding may follow)
        name, size, typeflag = _parse_header(block, shard, pos)
        key, ext = _check_name(name, typeflag, shard)
        member = Member(name=name, key=key, ext=ext, offset=pos + BLOCK, size=size)
        padded = (size + BLOCK - 1) // BLOCK * BLOCK
        limit = MAX_RECORD_BYTES if ext == "json" else MAX_IMAGE_BYTES
        if size > limit:
            raise ShardFormatError(
                f"{shard}: member {name!r} (key {key!r}) declares {size} bytes, more than the "
                f"{limit}-byte limit for a .{ext} member"
            )
        if read_data:
            data = fh.read(size)
            if len(data) < size:
                raise ShardFormatError(
                    f"{shard}: member {name!r} (key {key!r}) is truncated: {len(data)} of {size} bytes"
                )
            fh.read(padded - size)
        else:
            data = None
            end = fh.seek(0, os.SEEK_END)
            if member.offset + size > end:
                raise ShardFormatError(
                    f"{shard}: member {name!r} (key {key!r}) is truncated: file ends at byte {end}"
                )
            fh.seek(member.offset + padded)
        pos = member.offset + padded
        yield member, data


def index_shard(path: str | Path) -> list[Member]:
    """Every member of a shard (headers only, data skipped), checked like :func:`iter_members`."""
    with open(path, "rb") as fh:
        return [m for m, _ in iter_members(fh, str(path), read_data=False)]


def _decode_sample(key: str, parts: dict[str, bytes], shard: str, verify: bool) -> dict[str, Any]:
    where = f"{shard}: key {key!r}"
    if "json" not in parts:
        raise ShardFormatError(f"{where}: sample has no json member")
    image_ext = next((ext for ext in _IMAGE_EXTS if ext in parts), None)
    if image_ext is None:
        raise ShardFormatError(f"{where}: sample has no npy.zst (or npy.lz4) member")
    try:
        record = json.loads(parts["json"].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ShardFormatError(f"{where}: corrupted json record ({exc})") from None
    if not isinstance(record, dict):
        raise ShardFormatError(f"{where}: json record is not an object")
    try:
        expected_shape(record)
        np.dtype(str(record.get("dtype", "")))
    except (KeyError, TypeError, ValueError):
        raise ShardFormatError(f"{where}: json record lacks a valid shape/dtype") from None
    image, guidance = decode_row(parts[image_ext], where, record)
    check_image(image, record, where, verify=verify)
    if record.get("cell_id", key) != key:
        raise ShardFormatError(f"{where}: json record names cell {record.get('cell_id')!r}")
    meta = add_guidance(dict(record.get("meta") or {}), guidance)
    meta.setdefault("train_test_split", record.get("train_test_split", ""))
    meta.setdefault("tasks", list(record.get("tasks", [])))
    meta["shard"] = shard
    return make_sample(
        image,
        channels=record.get("channels", ()),
        source=record.get("source", ""),
        label=record.get("label", ""),
        cell_id=key,
        meta=meta,
    )


def check_image(image: np.ndarray, expected: Mapping[str, Any], where: str, verify: bool = False) -> None:
    """Check an image against a record/manifest row: shape (``shape`` or height/width/channels), dtype,
    and with ``verify`` its sha256. Raises :class:`ShardFormatError` naming ``where``."""
    shape = expected_shape(expected)
    if tuple(image.shape) != shape:
        raise ShardFormatError(f"{where}: image shape {tuple(image.shape)} != expected {shape}")
    if "dtype" in expected and str(image.dtype) != str(expected["dtype"]):
        raise ShardFormatError(f"{where}: image dtype {image.dtype} != expected {expected['dtype']}")
    if verify and expected.get("sha256") and image_checksum(image) != expected["sha256"]:
        raise ShardFormatError(f"{where}: image checksum mismatch (pixels changed)")


def iter_samples(
    path: str | Path, verify: bool = False, data: bytes | None = None
) -> Iterator[dict[str, Any]]:
    """Decoded samples of one shard in order (the shard file at ``path``, or its bytes ``data`` with ``path``
    naming it in errors); ``verify`` also checks each image's sha256 against its record.

    Each sample's members must be adjacent (json, then npy.zst); a key seen twice, a missing member or a
    member of another key in between is an error naming the shard and key.
    """
    shard = str(path)
    seen: set[str] = set()
    current: str | None = None
    parts: dict[str, bytes] = {}
    with open(path, "rb") if data is None else io.BytesIO(data) as fh:
        for member, blob in iter_members(fh, shard):
            assert blob is not None
            if member.key != current:
                if current is not None:
                    yield _decode_sample(current, parts, shard, verify)
                if member.key in seen:
                    raise ShardFormatError(
                        f"{shard}: key {member.key!r} appears twice (members not adjacent)"
                    )
                seen.add(member.key)
                current, parts = member.key, {}
            if member.ext in parts or (member.ext in _IMAGE_EXTS and any(e in parts for e in _IMAGE_EXTS)):
                raise ShardFormatError(f"{shard}: key {member.key!r} has two {member.ext} members")
            if member.ext in _IMAGE_EXTS and "json" not in parts:
                raise ShardFormatError(
                    f"{shard}: key {member.key!r}: {member.ext} member before (or without) its json"
                )
            parts[member.ext] = blob
        if current is not None:
            yield _decode_sample(current, parts, shard, verify)


def has_frame_checksum(data: bytes | memoryview) -> bool:
    """True when a member's frame (zstd or LZ4) carries a content checksum (verified on every decode)."""
    try:
        return frame_info(data).has_checksum
    except ValueError:
        return False


class MappedShards:
    """Read-only memory maps of local shard files: a member is decoded straight from the page cache, with no
    copy into a ``bytes`` first (that copy was a third of a read of an uncompressed member).

    Maps are made per process (a forked DataLoader worker makes its own) and kept in the process-wide
    :data:`chammi_data.store.fdpool.MAPS` pool (bounded for all readers together; a reader's maps are dropped
    when it is collected). Before each read the file's size is checked, so a shard truncated in place reads
    as truncated (an error) instead of faulting; builds never truncate, they replace files by rename, which a
    map does not notice (nor does a cached ``pread`` descriptor)."""

    def __init__(self) -> None:
        self._token = POOL.token()

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]

    def view(self, path: str, offset: int, nbytes: int) -> memoryview | None:
        """``nbytes`` of ``path`` from ``offset`` as a view of its map; None when the file is shorter (or
        empty, or missing: the caller's ``pread`` then says which)."""
        return MAPS.view(self._token, path, offset, nbytes)

    def __del__(self) -> None:
        try:
            MAPS.close_token(self._token)
        except Exception:
            pass


class ShardReader:
    """Random access to images by manifest row: a view of the memory-mapped shard (local,
    :class:`MappedShards`) or one ranged request (remote) at the row's offset, no tar scan; see
    :class:`chammi_data.store.storage.ReleaseStore`.

    Reads are verified by default: the row's shape and dtype bound the decode (before anything is allocated),
    zstd checks the frame's content checksum, and a member written without one (older releases) has its
    pixels checked against the row's sha256. ``verify=True`` checks the sha256 always. A corrupt sample
    raises :class:`ShardFormatError` naming the release, shard and key; it is never returned.
    Safe to pickle into DataLoader workers: connections and files are reopened per process.
    """

    def __init__(self, store: ReleaseStore):
        self.store = require_store(store, "ShardReader")
        self._maps = MappedShards() if self.store.is_local else None

    def where(self, row: Mapping[str, Any]) -> str:
        """How errors name a row: the shard's full path or URL and the key."""
        return f"{self.store.path(str(row['shard']))}: key {row['key']!r}"

    def read_bytes(self, row: Mapping[str, Any]) -> bytes:
        """The compressed image bytes of one manifest row."""
        shard, nbytes, offset = str(row["shard"]), int(row["nbytes"]), int(row["offset"])
        try:
            data = self.store.read_range(shard, offset, nbytes)
        except FileNotFoundError as exc:
            if isinstance(exc, RemoteObjectError):
                raise
            raise FileNotFoundError(f"shard {shard} not found in release {self.store}") from None
        if len(data) != nbytes:
            raise ShardFormatError(
                f"{self.where(row)}: truncated, read {len(data)} of {nbytes} bytes at offset {offset}"
            )
        return data

    def read(self, row: Mapping[str, Any], verify: bool | None = None) -> np.ndarray:
        """(C, H, W) image of one manifest row, checked as the class docstring says (``verify``: None = by
        frame checksum, sha256 only where a frame has none; True = sha256 always)."""
        return self.read_member(row, verify)[0]

    def read_member(
        self, row: Mapping[str, Any], verify: bool | None = None
    ) -> tuple[np.ndarray, Guidance | None]:
        """(image, guidance) of one manifest row in one read: :meth:`read` plus the cells of a CHAMMI-75
        image (``codec.Guidance``; None for other sources)."""
        where = self.where(row)
        data = None
        if self._maps is not None:  # local: decode from the page cache, no copy first
            data = self._maps.view(self.store.path(str(row["shard"])), int(row["offset"]), int(row["nbytes"]))
        if data is None:
            data = self.read_bytes(row)
        image, guidance = decode_row(data, where, row)
        check_image(
            image, row, where, verify=bool(verify) or (verify is None and not has_frame_checksum(data))
        )
        return image, guidance

    def close(self) -> None:
        self.store.close()


def read_sample(root: Any, row: Mapping[str, Any], verify: bool | None = None) -> np.ndarray:
    """One image by manifest row (``shard``, ``key``, ``offset``, ``nbytes``): a single read, no scan."""
    reader = ShardReader(open_store(root))
    try:
        return reader.read(row, verify=verify)
    finally:
        reader.close()
