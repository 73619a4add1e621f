"""The local shard cache's files: atomic writes, a clear error on a full disk, no temporary file left forever.

A shard is downloaded into a temporary file beside its final name, then renamed into place, so a reader never
sees half a shard. The temporary name records who writes it: ``.<name>.<host tag>-<pid>-<random>.tmp``
(the host tag is a hash of the host name, so a cache on a shared filesystem tells its hosts apart).

- :func:`clean_stale_temp_files` (run when a store first uses its cache in a process) removes the temporary
  files of writers that are gone: on this host, a writer pid that no longer runs; on any host, a file
  untouched for :data:`STALE_AFTER_S` seconds (a writer appends as it downloads, so a file that old is
  nobody's). A file a live process on this host is writing is never touched.
- :class:`ShardCache`: a remote release's whole shards, downloaded once and checked against ``release.json``.
- :class:`CacheFullError`: a disk that fills up while a shard is written gives one error naming the cache
  path, the bytes needed and the bytes free; the partial file is removed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from chammi_data.errors import UserError
from chammi_data.store.paths import file_sha256
from chammi_data.store.remote import RemoteReadError

log = logging.getLogger(__name__)

#: Seconds after which a temporary file nobody touched is removed whoever wrote it.
STALE_AFTER_S = 3600.0
_TMP = re.compile(r"^\..+\.(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]+\.tmp$")


def host_tag() -> str:
    """8 hex digits naming this host in temporary file names."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def temp_path(path: Path) -> Path:
    """A temporary name beside ``path`` that records this host and process."""
    return path.with_name(f".{path.name}.{host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp")


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def is_stale(path: Path, now: float | None = None, max_age: float = STALE_AFTER_S) -> bool:
    """True when the temporary file ``path`` belongs to no live writer (see the module docstring)."""
    try:
        age = (time.time() if now is None else now) - path.stat().st_mtime
    except FileNotFoundError:
        return False
    if age > max_age:
        return True
    m = _TMP.match(path.name)
    return m is not None and m["host"] == host_tag() and not _pid_running(int(m["pid"]))


def clean_stale_temp_files(root: Path, max_age: float = STALE_AFTER_S) -> list[Path]:
    """Remove the stale temporary files under ``root`` (see :func:`is_stale`); returns what was removed."""
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    now = time.time()
    for path in root.rglob(".*.tmp"):
        if path.is_file() and is_stale(path, now, max_age):
            try:
                path.unlink()
                removed.append(path)
            except FileNotFoundError:  # another process cleaned it first
                pass
    return removed


class CacheFullError(UserError, OSError):
    """The cache's disk is full (or over quota): names the cache path, the bytes needed and the bytes free."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.errno = errno.ENOSPC


def _free_bytes(path: Path) -> int | None:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def write_atomically(path: Path, chunks: Iterable[bytes | memoryview], size: int | None, what: str) -> str:
    """Write ``chunks`` to ``path`` through a temporary file and rename it into place; returns the sha256 of
    what was written. ``size``: the bytes expected (for the error message); ``what``: the object being
    cached, for errors. A full disk raises :class:`CacheFullError`; no partial file is left."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    digest = hashlib.sha256()
    written = 0
    try:
        with open(tmp, "wb") as fh:
            for chunk in chunks:
                _write(fh, chunk)
                digest.update(chunk)
                written += len(chunk)
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        tmp.unlink(missing_ok=True)
        need = size if size is not None else written
        free = _free_bytes(path.parent)
        raise CacheFullError(
            f"no space left in the cache at {path.parent} for {what}: it needs {need:,} bytes, "
            f"{'an unknown number of' if free is None else f'{free:,}'} bytes are free there "
            "(free some space or give another cache_dir)",
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
    return digest.hexdigest()


def _write(fh: Any, chunk: bytes | memoryview) -> None:
    """One write into the cache (a function of its own so tests can make the disk full)."""
    fh.write(chunk)


class ShardCache:
    """Whole shards of one remote release on local disk (``store.cache_root()``): each downloaded once,
    atomically, in requests of ``chunk`` bytes (each with its deadline), and checked against the sha256
    ``release.json`` records once per process before its first use; a bad download is fetched once more, then
    an error. The first use in a process removes the temporary files of downloads whose writer is gone."""

    def __init__(self, store: Any, chunk: int) -> None:
        self.store, self.chunk = store, chunk
        self.verified: set[str] = set()
        self.sums: dict[str, str] | None = None
        self.cleaned = False

    def shard_sha256(self, rel: str) -> str | None:
        """The sha256 ``release.json`` records for shard ``rel`` (None when it records none)."""
        if self.sums is None:
            try:
                self.sums = dict(json.loads(self.store.read_bytes("release.json")).get("shards") or {})
            except FileNotFoundError:
                self.sums = {}
        return self.sums.get(rel)

    def local_path(self, rel: str) -> Path:
        """The checked cached copy of ``rel``, downloaded when missing or not matching."""
        if not self.cleaned:
            self.cleaned = True
            for stale in clean_stale_temp_files(self.store.cache_root()):
                log.info("removed %s (a download whose writer is gone)", stale)
        path = self.store.cache_path(rel)
        if str(path) in self.verified:
            return path
        expected = self.shard_sha256(rel)
        if path.is_file() and (expected is None or file_sha256(path) == expected):
            self.verified.add(str(path))
            return path
        url = self.store.path(rel)
        for attempt in (1, 2):
            size = self.store.size(rel)
            got = write_atomically(path, self._chunks(rel, size), size, url)
            if expected is None or got == expected:
                self.verified.add(str(path))
                return path
            log.warning("%s: download %d has sha256 %s, release.json records %s", url, attempt, got, expected)
        path.unlink(missing_ok=True)
        raise RemoteReadError(
            f"{url}: the downloaded shard does not match the sha256 in release.json after 2 downloads (got "
            f"{got}, expected {expected}); the cached copy was removed"
        )

    def _chunks(self, rel: str, size: int | None) -> Iterator[bytes | memoryview]:
        store = self.store
        if size is None or size <= self.chunk or store.ranges_ignored:
            yield store.read_bytes(rel, what="download shard", nbytes=size)
            return
        for offset in range(0, size, self.chunk):
            n = min(self.chunk, size - offset)
            data, whole = store.fetch_range(rel, offset, n)
            if whole:  # the server sent everything at once
                yield data
                return
            if len(data) != n:
                raise RemoteReadError(
                    f"{store.path(rel)}: download shard: got {len(data)} of {n} bytes at offset {offset} "
                    f"(the object is {size} bytes)"
                )
            yield data
