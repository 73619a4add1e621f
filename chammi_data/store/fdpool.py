"""Process-wide, bounded pools of the descriptors and memory maps that local reads use.

A store reads shard members with ``os.pread`` on descriptors it keeps open (opening a tar per member costs
more than reading it). Kept per store, the bound multiplied with the number of stores alive: a process that
opened a few dozen releases (a test session, a notebook comparing builds, an evaluation over many tasks)
held over a thousand descriptors, past the common limit of 1,024. Here the bound is for the process.

Entries are keyed by (store token, path), not by path alone: a store keeps reading the file it opened even
when a rebuild has since replaced the path, exactly as before, and a store opened after the rebuild opens the
new file. An entry in use by a thread is never closed under it (a closed descriptor's number can be reused by
the next ``open``, and a ``pread`` on it would read another file's bytes); the pool may exceed its bound while
more threads than the bound read at once, and closes the extra entries as they are released.
"""

from __future__ import annotations

import itertools
import mmap
import os
import resource
import threading
from collections import OrderedDict

__all__ = ["MAPS", "POOL", "FdPool", "MapPool", "default_limit"]


def default_limit() -> int:
    """256 descriptors, or a quarter of the process's soft ``RLIMIT_NOFILE`` when that is lower (>= 8)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 256
    return max(8, min(256, soft // 4))


class FdPool:
    """Open descriptors by (token, path), least recently used closed first beyond ``limit``."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit if limit is not None else default_limit()
        self._lock = threading.Lock()
        self._open: OrderedDict[tuple[int, str], list[int]] = OrderedDict()  # key -> [fd, users]
        self._tokens = itertools.count(1)
        self._pid = os.getpid()

    def token(self) -> int:
        """A new owner token (one per store)."""
        return next(self._tokens)

    def _forked(self) -> None:
        # the child's copies of the parent's descriptors: close them, the child opens its own
        if self._pid != os.getpid():
            for fd, _ in self._open.values():
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._open.clear()
            self._lock = threading.Lock()
            self._pid = os.getpid()

    def pread(self, token: int, path: str, offset: int, length: int) -> bytes:
        """``length`` bytes of ``path`` from ``offset`` through the descriptor ``token`` keeps open."""
        key = (token, path)
        self._forked()
        with self._lock:
            entry = self._open.get(key)
            if entry is not None:
                self._open.move_to_end(key)
                entry[1] += 1
        if entry is None:
            fd = os.open(path, os.O_RDONLY)  # outside the lock: a slow open does not stall other readers
            with self._lock:
                entry = self._open.get(key)
                if entry is None:
                    entry = self._open[key] = [fd, 1]
                    self._trim()
                else:  # another thread opened it meanwhile: use theirs
                    entry[1] += 1
                    os.close(fd)
        try:
            return os.pread(entry[0], length, offset)
        finally:
            with self._lock:
                entry[1] -= 1
                if entry[1] == 0 and self._open.get(key) is not entry:  # dropped while we read
                    os.close(entry[0])
                self._trim()

    def _trim(self) -> None:
        """Close idle entries, oldest first, until at most ``limit`` are open (caller holds the lock)."""
        if len(self._open) <= self.limit:
            return
        for key in [k for k, (_, users) in self._open.items() if users == 0]:
            if len(self._open) <= self.limit:
                break
            os.close(self._open.pop(key)[0])

    def close_token(self, token: int) -> None:
        """Close the descriptors of one owner (entries in use are closed by their last reader)."""
        if self._pid != os.getpid():
            return  # the parent's entries: the child's pool was emptied on first use
        with self._lock:
            for key in [k for k in self._open if k[0] == token]:
                fd, users = self._open.pop(key)
                if users == 0:
                    os.close(fd)

    def open_count(self) -> int:
        """Descriptors open now (for tests and diagnostics)."""
        return len(self._open)


class MapPool:
    """Read-only memory maps by (token, path), least recently used dropped first beyond ``limit``.

    A map keeps one descriptor of its own (``mmap`` duplicates the one it was made from, which is closed at
    once) and closes it when the last reference goes: the pool's, or a view a caller still holds. Dropping
    a map from the pool therefore never invalidates a view in use; it bounds what the pool keeps alive.
    """

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit if limit is not None else default_limit()
        self._lock = threading.Lock()
        self._maps: OrderedDict[tuple[int, str], mmap.mmap] = OrderedDict()
        self._pid = os.getpid()

    def view(self, token: int, path: str, offset: int, nbytes: int) -> memoryview | None:
        """``nbytes`` of ``path`` from ``offset`` as a view of its map; None when the file is shorter than
        that now (truncated in place), empty or missing (the caller's ``pread`` then says which)."""
        key = (token, path)
        if self._pid != os.getpid():  # forked: the child maps its own (the inherited ones go with the refs)
            self._maps, self._lock, self._pid = OrderedDict(), threading.Lock(), os.getpid()
        with self._lock:
            mm = self._maps.get(key)
            if mm is not None:
                self._maps.move_to_end(key)
        if mm is None:
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                return None
            try:
                mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError):  # an empty file cannot be mapped
                return None
            finally:
                os.close(fd)  # the map holds its own duplicate
            with self._lock:
                mm = self._maps.setdefault(key, mm)
                while len(self._maps) > self.limit:
                    self._maps.popitem(last=False)
        if offset + nbytes > min(len(mm), mm.size()):  # size(): the file's size now, by the map's descriptor
            return None
        return memoryview(mm)[offset : offset + nbytes]

    def close_token(self, token: int) -> None:
        """Drop the maps of one owner (each closes when its last view is gone)."""
        with self._lock:
            for key in [k for k in self._maps if k[0] == token]:
                del self._maps[key]

    def open_count(self) -> int:
        """Maps the pool keeps now (for tests and diagnostics)."""
        return len(self._maps)


#: The pools of this process: ``pread`` descriptors and memory maps, each bounded by itself.
POOL = FdPool()
MAPS = MapPool()
