"""The local shard cache's files: atomic writes, a clear error on a full disk, no temporary file left forever.

A shard is downloaded into a temporary file beside its final name, then renamed into place, so a reader never
sees half a shard. The temporary name records who writes it: ``.<name>.<host tag>-<pid>-<random>.tmp``
(the host tag is a hash of the host name, so a cache on a shared filesystem tells its hosts apart).

- :func:`clean_stale_temp_files` (run when a store first uses its cache in a process) removes the temporary
  files of writers that are gone: on this host, a writer pid that no longer runs; on any host, a file
  untouched for :data:`STALE_AFTER_S` seconds (a writer appends as it downloads, so a file that old is
  nobody's). A file a live process on this host is writing is never touched.
- :class:`CacheFullError`: a disk that fills up while a shard is written gives one error naming the cache
  path, the bytes needed and the bytes free; the partial file is removed.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from chammi_data.errors import UserError

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
