"""The unit spill file: one finished unit's encoded cells, records and skips, written once, read by offset.

A spill (``.work/<name>/units/<unit_id>.spill`` in the output's store: the output folder, or the bucket
prefix of an object-store output, so that unit results survive a crash of the client and no step needs a
disk that the client and the workers share) holds the encoded bytes of every cell of the unit (its
tar image member, then its zarr chunk: ``chammi_data.format.writer.encode_cell``), then a JSON trailer
``{"key", "records", "skipped", "found", "ok"}`` (the unit's :class:`UnitOutcome`), the trailer's length
(uint64 little-endian) and a marker line. Each record holds the cell's ids, metadata, pixel sha256 and shape,
and ``tar`` / ``zarr`` = [offset, length] of its bytes, so a shard writer reads exactly its bytes with one
``pread`` each.

A spill is written whole (a temp file moved into place, or one object upload), so it is complete or
absent; its ``key`` says what it was made from (pipeline, unit, options, format version): a spill with
another key, a torn file or a foreign file is recomputed. That is what makes a build resumable after a kill.
Each record also carries ``bytes_sha256``, the digest of the cell's encoded bytes, which names the release's
content before its shards are written (``pipelines.engine.output_store.release_generation``).

On an object store a worker also keeps the spills it wrote in a cache folder of its own disk
(:func:`cached_spill`, named by the spill's key, so a file there always holds that key's bytes); a shard
writer on that worker reads them from there instead of the bucket, and the engine places each shard task
on the worker that holds most of its cells. The upload itself runs in the background while the next unit
is processed; a task returns only when its uploads are done.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chammi_data.format.release_format import canonical_json
from chammi_data.store.objects import ObjectStore
from pipelines.sources.base import Skipped, Unit, UnitResult

#: part of every spill key: a spill written by another format version is recomputed
SPILL_VERSION = 5
#: bytes of a spill's end fetched to find its trailer on an object store (more in a second request if needed)
TAIL_FETCH = 256 << 10
#: a spill file ends with its JSON trailer, the trailer's length (uint64 little-endian) and this marker
SPILL_MAGIC = b"CHAMMI-SPILL-2\n"
_TAIL = 8 + len(SPILL_MAGIC)


@dataclass
class UnitOutcome:
    """What one unit gave: its cells' spill records (in the unit's order), its skipped items, the candidate
    cells it held (``UnitResult.found``) and whether it was used (``ok``: ``process`` returned cells or
    per-cell skips, rather than a skip of the whole unit)."""

    records: list[dict[str, Any]]
    skipped: list[Skipped]
    found: dict[str, int] = field(default_factory=dict)
    ok: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "skipped": [s.to_dict() for s in self.skipped],
            "found": self.found,
            "ok": self.ok,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UnitOutcome:
        return cls(
            d["records"], [Skipped.from_dict(s) for s in d["skipped"]], dict(d["found"]), bool(d["ok"])
        )


def spill_key(name: str, unit: Unit, options_hash: str) -> str:
    """What a spill depends on: pipeline name, unit id and payload, the pipeline's options. A mismatch =
    recompute."""
    return hashlib.sha256(
        canonical_json([SPILL_VERSION, name, unit.unit_id, unit.payload, options_hash]).encode()
    ).hexdigest()


def cache_folder(store: ObjectStore) -> Path:
    """This machine's cache of the spills of ``store`` (see the module docstring)."""
    tag = hashlib.sha256(store.url.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "chammi-spills" / tag


def cached_spill(store: ObjectStore, rel: str, key: str) -> Path:
    """Where this machine keeps its copy of spill ``rel`` with ``key``."""
    return cache_folder(store) / f"{hashlib.sha256(rel.encode()).hexdigest()[:16]}-{key[:32]}.spill"


def clear_cache(store: ObjectStore) -> None:
    """Remove this machine's cached spills of ``store`` (a dask worker, after a build)."""
    shutil.rmtree(cache_folder(store), ignore_errors=True)


def write_spill(
    store: ObjectStore,
    rel: str,
    key: str,
    result: UnitResult,
    ok: bool = True,
    uploads: Executor | None = None,
    pending: list[Future[None]] | None = None,
    codec: str = "zstd",
) -> UnitOutcome:
    """Write a unit's cells as one spill object ``rel`` of ``store``, whole or not at all; returns the unit's
    outcome (see the module docstring). On an object store the spill is made in this machine's cache and
    uploaded from there, in the background when ``uploads`` is given (its future goes to ``pending``).
    ``codec``: the image members' codec (``chammi_data.format.codec.CODECS``).

    Compressing here, on the worker that made the cells, spreads the heaviest part of writing over the unit
    phase; the shard writers only concatenate.
    """
    if store.is_local:
        with store.writer(rel) as fh:
            return _write(fh, key, result, ok, codec)
    path = cached_spill(store, rel, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as fh:
            outcome = _write(fh, key, result, ok, codec)
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT) and exc.filename is None:
            raise OSError(exc.errno, os.strerror(exc.errno), str(path)) from None  # this machine's disk
        raise
    finally:
        tmp.unlink(missing_ok=True)
    if uploads is None:
        store.put_file(rel, path)
    else:
        fut = uploads.submit(store.put_file, rel, path)
        if pending is not None:
            pending.append(fut)
    return outcome


def _write(fh: Any, key: str, result: UnitResult, ok: bool, codec: str = "zstd") -> UnitOutcome:
    from chammi_data.format.writer import encode_cell

    records = []
    pos = 0
    for c in result.cells:
        enc = encode_cell(c, codec)
        fh.write(enc.member)
        fh.write(enc.chunk)
        digest = hashlib.sha256(enc.member)
        digest.update(enc.chunk)
        records.append(
            {
                **enc.record,
                "tar": [pos, len(enc.member)],
                "zarr": [pos + len(enc.member), len(enc.chunk)],
                "bytes_sha256": digest.hexdigest(),
            }
        )
        pos += len(enc.member) + len(enc.chunk)
    outcome = UnitOutcome(records, list(result.skipped), dict(result.found), ok)
    trailer = canonical_json({"key": key, **outcome.to_dict()}).encode("utf-8")
    fh.write(trailer)
    fh.write(len(trailer).to_bytes(8, "little") + SPILL_MAGIC)
    return outcome


def _parse_tail(tail: bytes, size: int | None = None) -> tuple[int, int] | None:
    """(trailer length, file size if known) from the last bytes of a spill; None when they are no spill's."""
    if len(tail) < _TAIL or tail[-len(SPILL_MAGIC) :] != SPILL_MAGIC:
        return None
    n = int.from_bytes(tail[-_TAIL : -_TAIL + 8], "little")
    if size is not None and n > size - _TAIL:
        return None
    return n, size or 0


def _outcome(trailer: bytes, key: str) -> UnitOutcome | None:
    try:
        data = json.loads(trailer.decode("utf-8"))
        if data.get("key") != key:
            return None
        return UnitOutcome.from_dict(data)
    except Exception:  # a foreign file: recompute the unit
        return None


def read_spill_outcome(store: ObjectStore, rel: str, key: str) -> UnitOutcome | None:
    """The outcome stored in a complete spill with the expected key; None when absent, stale or damaged."""
    return read_spill_outcomes(store, [(rel, key)])[0]


def read_spill_outcomes(store: ObjectStore, items: Sequence[tuple[str, str]]) -> list[UnitOutcome | None]:
    """:func:`read_spill_outcome` of many spills: one listing and concurrent reads of the spills' ends on an
    object store (a build with thousands of units resumes in seconds)."""
    if store.is_local:
        return [_local_outcome(store.path(rel), key) for rel, key in items]
    folders = sorted({rel.rsplit("/", 1)[0] for rel, _ in items})
    present = {f for folder in folders for f in store.list_files(folder)}
    todo = [(i, rel, key) for i, (rel, key) in enumerate(items) if rel in present]
    out: list[UnitOutcome | None] = [None] * len(items)
    if not todo:
        return out
    tails = store.read_many([(rel, -TAIL_FETCH, None) for _, rel, _ in todo])
    for (i, rel, key), tail in zip(todo, tails, strict=True):
        if isinstance(tail, BaseException):
            continue  # unreadable now: the unit is recomputed
        found = _parse_tail(bytes(tail))
        if found is None:
            continue
        n = found[0]
        if n + _TAIL <= len(tail):
            trailer = bytes(tail[len(tail) - _TAIL - n : len(tail) - _TAIL])
        else:  # a long trailer (a unit of many cells): read exactly it
            size = (store.info(rel) or {}).get("size", 0)
            if n > size - _TAIL:
                continue
            trailer = store.read_range(rel, size - _TAIL - n, n)
        out[i] = _outcome(trailer, key)
    return out


def _local_outcome(path: str, key: str) -> UnitOutcome | None:
    if not os.path.isfile(path):
        return None
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            if size < _TAIL:
                return None
            fh.seek(size - _TAIL)
            found = _parse_tail(fh.read(_TAIL), size)
            if found is None:
                return None
            fh.seek(size - _TAIL - found[0])
            return _outcome(fh.read(found[0]), key)
    except OSError:  # a foreign or vanishing file: recompute the unit
        return None


class SpillReader:
    """Reads cells' bytes out of spills by their [offset, length] spans: ``pread`` on open files (a local
    output's spills, or this machine's cached copies of an object store's); the other spans of an object
    store are fetched together (:meth:`fetch`), one ranged request per spill covering all the spans needed
    from it, several spills at once."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self._fds: dict[str, int] = {}
        self._fetched: dict[tuple[str, int, int], bytes] = {}

    def _local(self, rel: str, key: str) -> str | None:
        if self.store.is_local:
            return self.store.path(rel)
        path = cached_spill(self.store, rel, key) if key else None
        return str(path) if path is not None and path.is_file() else None

    def fetch(self, wanted: Sequence[tuple[str, Sequence[int], str]]) -> None:
        """Fetch ahead the (spill, [offset, length], key) spans that :meth:`read` will be asked for."""
        cover: dict[str, list[int]] = {}
        for rel, (off, length), key in wanted:
            if self._local(rel, key) is not None:
                continue
            lo, hi = cover.get(rel, [off, off + length])
            cover[rel] = [min(lo, off), max(hi, off + length)]
        if not cover:
            return
        rels = sorted(cover)
        got = self.store.read_many([(r, cover[r][0], cover[r][1]) for r in rels])
        blobs = dict(zip(rels, got, strict=True))
        for rel, (off, length), _ in wanted:
            blob = blobs.get(rel)
            if blob is None or isinstance(blob, BaseException):
                continue  # read() fetches it alone, with retries and an error naming it
            start = off - cover[rel][0]
            piece = bytes(blob[start : start + length])
            if len(piece) == length:
                self._fetched[(rel, off, length)] = piece

    def read(self, rel: str, span: list[int] | tuple[int, int], what: str = "cell", key: str = "") -> bytes:
        """The ``span`` = [offset, length] bytes of spill ``rel`` (``key``: its spill key, to use this
        machine's copy); ``OSError`` when the spill is shorter."""
        offset, length = span
        local = self._local(rel, key)
        if local is not None:
            if local not in self._fds:
                self._fds[local] = os.open(local, os.O_RDONLY)
            data = os.pread(self._fds[local], length, offset)
        else:
            data = self._fetched.pop((rel, offset, length), None) or self.store.read_range(
                rel, offset, length
            )
        if len(data) != length:
            raise OSError(f"spill {self.store.path(rel)} is shorter than its records say ({what})")
        return data

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._fetched.clear()

    def __enter__(self) -> SpillReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
