"""Where a source's raw data is: a local folder or any fsspec location, read one unit's objects at a time.

A build hands each source pipeline a :class:`RawInput` (an :class:`~chammi_data.store.objects.ObjectStore`:
reads with retries and errors naming the object and the credentials source, listing where the location can
list). What a source must do to read from any location:

1. ``discover(raw, opts)`` reads its tables through ``raw`` (:meth:`RawInput.table`,
   :meth:`RawInput.exists`, :meth:`RawInput.list_files`) - never ``open`` or ``Path`` - and puts
   ``raw.url`` (``"root"``) and the files of each unit, as paths relative to the root or as full URLs,
   into the unit's payload (plain text: payloads are hashed and travel to the workers);
2. ``process(unit, opts)`` gets the same input back with :func:`raw_input` (``raw_input(payload["root"])``: on
   a dask worker the store the engine bound for this build, with its storage options) and reads each file
   with :meth:`RawInput.read` / :meth:`RawInput.open` (a local path for a local input, an in-memory file
   otherwise) or :meth:`RawInput.local_file` (a worker-local copy, for SQLite);
3. optionally ``unit_files(unit)`` names the objects a unit reads, so the engine fetches them concurrently
   ahead of use (:meth:`RawInput.prefetch`): on an object store that hides the per-request latency.

``discover`` is also given a plain path (tests, scripts): :func:`as_raw_input` turns any location into a
store. A source that opens its own store from the location (``open_store(raw, storage_options=...)``, as
the CHAMMI-75 source does) keeps working: a ``RawInput`` is a ``ReleaseStore``, and ``str(raw)`` is its URL.

Relative names (:meth:`RawInput.display`) are the same for the same data wherever it lies, so provenance in
the release (``meta`` file fields) does not depend on the location and a bucket build gives the bytes of a
local one. A table naming an object outside the root by URL (a Cell Painting ``URL_<Channel>`` column
pointing into the Gallery) is read from there, with the same storage options.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import os
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import pandas as pd

from chammi_data.store.credentials import client_environment
from chammi_data.store.objects import ObjectStore
from chammi_data.store.paths import protocol_of

#: objects fetched together in one concurrent round
PREFETCH_ROUND = 16


def _is_absolute(ref: str) -> bool:
    return "://" in ref or os.path.isabs(ref)


def _root_of(location: str) -> str:
    """The root a foreign object is read under: ``scheme://bucket`` (``scheme://host``) or ``/``."""
    proto = protocol_of(location)
    if proto in ("", "file"):
        return "/"
    scheme, rest = location.split("://", 1)
    return f"{scheme}://{rest.split('/', 1)[0]}"


class RawInput(ObjectStore):
    """The raw data of one source (see the module docstring)."""

    def __init__(
        self, location: Any = None, storage_options: Mapping[str, Any] | None = None, retry: Any = None
    ):
        super().__init__(location, storage_options, retry)
        self._foreign: dict[str, RawInput] = {}
        self._pending: dict[str, Future[bytes]] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def __fspath__(self) -> str:
        """The folder of a local input (``Path(raw)`` keeps working for sources that only read folders)."""
        if not self.is_local:
            raise TypeError(f"{self.url} is not a local folder; read it through the RawInput methods")
        return self.url

    # -- names -------------------------------------------------------------------------------------------
    def locate(self, ref: str) -> tuple[RawInput, str]:
        """(store, path in it) for ``ref``: a path relative to this root, or a full path or URL (inside the
        root, or anywhere else: then read with this input's storage options)."""
        ref = str(ref)
        if not _is_absolute(ref):
            return self, ref.replace("\\", "/").lstrip("/")
        rel = self.rel_of(ref)
        if rel is not None:
            return self, rel
        root = _root_of(ref)
        with self._lock:
            other = self._foreign.get(root)
            if other is None:
                other = self._foreign[root] = RawInput(root, self.storage_options, self.retry)
        rel = other.rel_of(ref)
        return other, rel if rel is not None else ref

    def display(self, ref: str) -> str:
        """``ref`` as the release records it: relative to the root when inside it, else the full location."""
        store, rel = self.locate(ref)
        return rel if store is self else store.path(rel)

    def full(self, ref: str) -> str:
        """The full path or URL of ``ref``."""
        store, rel = self.locate(ref)
        return store.path(rel)

    def name(self, ref: str) -> str:
        """The file name of ``ref`` (its last path component)."""
        return str(ref).replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]

    # -- questions ------------------------------------------------------------------------------------
    def is_file(self, ref: str) -> bool:
        """True when ``ref`` exists as a file (object). Over HTTP a "no" is asked once more: fsspec reports a
        failed HEAD (a 5xx, a reset) as a missing file, and discovery must not take a fault for absence."""
        store, rel = self.locate(ref)
        if store.exists(rel):
            return True
        if store.protocol in ("http", "https"):
            time.sleep(0.2)
            return store.exists(rel)
        return False

    def is_dir(self, ref: str) -> bool:
        """True when ``ref`` is a folder (a prefix holding objects; always False over plain HTTP)."""
        store, rel = self.locate(ref)
        if store.is_local:
            return os.path.isdir(store.path(rel))
        if not store.can_list:
            return False
        return bool(store.retrying("stat folder", rel, lambda: store.fs.isdir(store.key(rel))))

    # -- reading ------------------------------------------------------------------------------------
    def read(self, ref: str) -> bytes:
        """The whole object ``ref`` (from the prefetch when it was fetched ahead)."""
        store, rel = self.locate(ref)
        key = store.path(rel)
        with self._lock:
            pending = self._pending.pop(key, None)
        if pending is not None:
            try:
                return pending.result()
            except Exception:  # fetched ahead and failed: read it now, with the retries and the errors
                pass
        return store.read_object(rel)

    def fetch(self, ref: str) -> str | IO[bytes]:
        """:meth:`open`, but a missing file raises ``FileNotFoundError`` here (locally too), so a source can
        tell a missing file from an unreadable one."""
        store, rel = self.locate(ref)
        if store.is_local and not os.path.isfile(store.path(rel)):
            raise FileNotFoundError(errno.ENOENT, "no such file", store.path(rel))
        return self.open(ref)

    def open(self, ref: str) -> str | IO[bytes]:
        """What a decoder opens (tifffile, Pillow): the file's path for a local input, else the object in
        memory."""
        store, rel = self.locate(ref)
        if store.is_local:
            return store.path(rel)
        return io.BytesIO(self.read(ref))

    def table(self, ref: str, **read_csv: Any) -> pd.DataFrame:
        """A CSV/TSV table (``.gz`` too) as pandas reads it with ``read_csv`` options."""
        data = self.read(ref)
        if self.name(ref).endswith(".gz") or data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        return pd.read_csv(io.BytesIO(data), **read_csv)

    def first_line(self, ref: str) -> str:
        """The first line of a text table (BOM removed)."""
        data = self.read(ref)
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        return data.split(b"\n", 1)[0].decode("utf-8-sig", errors="replace")

    def local_file(self, ref: str) -> Path:
        """A local file holding ``ref``: the file itself for a local input, else a copy downloaded once per
        process into a temp folder of this machine (a plate's SQLite database)."""
        store, rel = self.locate(ref)
        if store.is_local:
            return Path(store.path(rel))
        info = store.info(rel) or {}
        tag = hashlib.sha256(f"{store.path(rel)}|{info.get('etag')}|{info.get('size')}".encode()).hexdigest()
        path = Path(tempfile.gettempdir()) / "chammi-raw-cache" / tag[:24] / self.name(rel)
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(store.read_object(rel))
            os.replace(tmp, path)
        return path

    # -- fetching ahead ---------------------------------------------------------------------------------
    def prefetch(self, refs: Iterable[str]) -> None:
        """Start fetching the objects ``refs`` in the background, several at once; :meth:`read` and
        :meth:`open` then take them from memory. Nothing is fetched ahead for a local input."""
        if self.is_local:
            return
        todo: list[tuple[RawInput, str, Future[bytes]]] = []
        for ref in refs:
            store, rel = self.locate(ref)
            if store.is_local:
                continue
            key = store.path(rel)
            with self._lock:
                if key in self._pending:
                    continue
                fut: Future[bytes] = Future()
                self._pending[key] = fut
            todo.append((store, rel, fut))
        if not todo:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="chammi-prefetch")
        for i in range(0, len(todo), PREFETCH_ROUND):
            self._pool.submit(_fetch_round, todo[i : i + PREFETCH_ROUND])

    def drop_prefetched(self) -> None:
        """Forget objects fetched ahead and not used (the end of a task)."""
        with self._lock:
            self._pending.clear()


def _fetch_round(batch: list[tuple[RawInput, str, Future[bytes]]]) -> None:
    """Fetch a round of objects ahead, several at once (one concurrent request per object); every future is
    resolved, with the bytes or with the error (the reader then reads the object itself, with retries)."""
    by_store: dict[int, list[tuple[RawInput, str, Future[bytes]]]] = {}
    for item in batch:
        by_store.setdefault(id(item[0]), []).append(item)
    try:
        for items in by_store.values():
            got = items[0][0].read_many([(rel, 0, None) for _, rel, _ in items])
            for (_, _, fut), data in zip(items, got, strict=True):
                if fut.done():
                    continue
                if isinstance(data, BaseException):
                    fut.set_exception(data)
                else:
                    fut.set_result(data)
    finally:  # never leave a reader waiting
        for _, _, fut in batch:
            if not fut.done():
                fut.set_exception(RuntimeError("not fetched ahead"))


_BOUND: dict[tuple[str, str], RawInput] = {}
_BOUND_LOCK = threading.Lock()


def _identity(store: RawInput) -> str:
    return f"{store.url}|{sorted((str(k), repr(v)) for k, v in store.storage_options.items())}"


def _key(url: str) -> tuple[str, str]:
    """Bound inputs are kept per location and client environment: an input bound while AWS_ENDPOINT_URL
    named one server is not the one a later build against another server reads."""
    return url, client_environment()


def bind(inputs: Iterable[RawInput]) -> list[RawInput]:
    """Make these inputs the ones :func:`raw_input` returns in this process (the engine calls it on each
    worker before a unit task); one instance per input and process is kept, so its connections are reused."""
    out = []
    with _BOUND_LOCK:
        for raw in inputs:
            kept = _BOUND.get(_key(raw.url))
            if kept is None or _identity(kept) != _identity(raw):
                kept = _BOUND[_key(raw.url)] = raw
            out.append(kept)
    return out


def raw_input(location: str | os.PathLike[str] | RawInput) -> RawInput:
    """The input at ``location`` as this build reads it: the bound store (with the build's storage options)
    when the engine bound one, else a store with default options (credentials from the standard chains)."""
    if isinstance(location, RawInput):
        return location
    text = os.fspath(location)
    with _BOUND_LOCK:
        found = _BOUND.get(_key(text)) or _BOUND.get(_key(text.rstrip("/")))
        if found is None:
            found = RawInput(text)
            found = _BOUND.setdefault(_key(found.url), found)
    return found


def as_raw_input(location: Any, storage_options: Mapping[str, Any] | None = None) -> RawInput:
    """A :class:`RawInput` for a path, a URL or a store (a ``RawInput`` is returned as it is)."""
    if isinstance(location, RawInput) and storage_options is None:
        return location
    if isinstance(location, ObjectStore):
        return RawInput(
            location.url, storage_options if storage_options is not None else location.storage_options
        )
    if storage_options is None:
        return raw_input(location)
    return RawInput(os.fspath(location), storage_options)
