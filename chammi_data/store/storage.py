"""Where a release lives: a local folder or any fsspec location, read with retries and an optional shard
cache.

A release is named by a *location*: a local path, ``file://``, ``s3://``, ``gs://``, ``http(s)://``, any other
fsspec URL, or an ``fsspec`` mapper. :class:`ReleaseStore` is the one object every reader uses to get at its
files (a reader never calls ``open``/``os.pread`` on a release itself): ``read_bytes`` (whole small files),
``read_range`` (one cell: a ``pread`` locally, one ranged GET remotely), ``read_shard`` (a whole shard) and
``local_path`` (a shard as a local file, from the cache);
- every remote request has a deadline and is retried with exponential backoff on timeouts, connection resets
  and 5xx answers (:mod:`chammi_data.store.remote`: ``RetryPolicy``, ``$CHAMMI_REMOTE_TIMEOUT_S``,
  ``$CHAMMI_REMOTE_DEADLINE_S``); a stalled or dead server becomes one :class:`RemoteReadError` naming the
  URL, the byte range or shard, the attempt count and the seconds spent, within the deadline (60 s by
  default). A missing object or a refused one (403/404) is not retried: the error names the object and the
  credentials source that was used (never a secret);
- a server that ignores ``Range`` (answers 200 with the whole object) is read correctly, and said once;
- ``cache_dir``: whole shards are downloaded once into ``cache_dir/<location hash>/`` and checked against the
  sha256 that ``release.json`` records before use; a bad download is fetched once more, then an error. A
  cached shard that fails the check is never read; a full disk is one error naming the path and the bytes
  needed, and temporary files of killed downloads are removed (:mod:`chammi_data.store.cache`).

A release that ``chammi-build`` wrote into an object store lives in a generation folder named by the
``release.json`` at the root (:mod:`chammi_data.store.generation`); a store reads the whole release from the
generation it found on first use.

Credentials and endpoints come from the standard places (the AWS/GCS environment and config files,
``AWS_ENDPOINT_URL`` for S3-compatible servers) or from ``storage_options``, which is passed to fsspec as is.
A store pickles without its open connections (DataLoader workers reconnect); ``storage_options`` travel to the
workers that way and are never printed, logged or written into a checkpoint, card or report.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from chammi_data.store.cache import ShardCache
from chammi_data.store.credentials import credentials_source
from chammi_data.store.fdpool import POOL
from chammi_data.store.obstore_client import ObstoreReader, obstore_reader
from chammi_data.store.paths import default_release_location, protocol_of, strip_file_scheme
from chammi_data.store.remote import (
    RemoteObjectError,
    RemoteReadError,
    RetryPolicy,
    call_fs,
    call_with_retries,
    client_options,
    limit_client_retries,
)

__all__ = [
    "MAX_OPEN_FILES",
    "OnRelease",
    "ReleaseNotFoundError",
    "ReleaseStore",
    "RemoteObjectError",
    "RemoteReadError",
    "RetryPolicy",
    "open_store",
    "require_store",
]

log = logging.getLogger(__name__)

#: Shard files a process keeps open for ``pread``, all stores together (the least recently used is closed
#: beyond this; a quarter of the soft RLIMIT_NOFILE where that is lower).
MAX_OPEN_FILES = POOL.limit
#: Bytes per request when a shard is downloaded into the cache (each request has its own deadline).
DOWNLOAD_CHUNK = 16 << 20


class ReleaseNotFoundError(FileNotFoundError):
    """No release at the given location; the message says what was looked for and what to do."""


class ReleaseStore:
    """Read access to the files of one release, wherever it is (see the module docstring).

    ``location``: a path, a URL, an ``fsspec`` mapper or another ``ReleaseStore``; ``storage_options``: passed
    to ``fsspec.filesystem``; ``cache_dir``: where whole shards are cached (None: no cache); ``retry``: the
    :class:`RetryPolicy` of remote reads.
    """

    url: str
    storage_options: dict[str, Any]
    cache_dir: Path | None
    retry: RetryPolicy

    def __init__(
        self,
        location: Any = None,
        storage_options: Mapping[str, Any] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        if isinstance(location, ReleaseStore):
            storage_options = storage_options if storage_options is not None else location.storage_options
            cache_dir = cache_dir if cache_dir is not None else location.cache_dir
            retry = retry or location.retry
            location = location.url
        fs = None
        if location is None:
            location = default_release_location()
        elif not isinstance(location, str | os.PathLike):
            fs, root = getattr(location, "fs", None), getattr(location, "root", None)
            if fs is None or root is None:
                raise TypeError(
                    f"a release location is a path, a URL or an fsspec mapper, not {type(location).__name__}"
                )
            protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
            location = root if protocol == "file" else fs.unstrip_protocol(root)
        text = os.fspath(location)
        self.protocol = protocol_of(text)
        self.is_local = self.protocol in ("", "file")
        if self.is_local:
            self.url = str(Path(strip_file_scheme(text)).expanduser().absolute())
        else:
            self.url = text.rstrip("/")
        # a mapper's filesystem: keep its options for the workers
        if storage_options is None and fs is not None:
            storage_options = dict(getattr(fs, "storage_options", None) or {})
        self.storage_options = dict(storage_options or {})
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.retry = retry or RetryPolicy()
        self._fs = fs
        self._fs_given = fs is not None  # a mapper's own filesystem is used as it is
        self._obstore: ObstoreReader | None | bool = False  # False: not decided yet in this process
        self._pid = os.getpid()
        self._fd_token = POOL.token()  # its descriptors in the process-wide pool (chammi_data.store.fdpool)
        self._cache: ShardCache | None = None  # the verified shard cache (made on first use)
        #: True once the server answered a ranged request with the whole object (said once, then cut here)
        self.ranges_ignored = False
        self._prefix: str | None = None
        self._root_release: bytes | None = None  # release.json as read while finding the generation

    # -- identity ------------------------------------------------------------------------------------------
    def __repr__(self) -> str:
        return f"ReleaseStore({self.url!r})"

    def __str__(self) -> str:
        return self.url

    def path(self, rel: str) -> str:
        """The full path or URL of a file of the release (``rel`` is relative to the release root; inside the
        release's generation when the location has one, see the module docstring)."""
        return self._at_root(self.generation_prefix() + rel)

    def _at_root(self, rel: str) -> str:
        return os.path.join(self.url, rel) if self.is_local else f"{self.url}/{rel}"

    def generation_prefix(self) -> str:
        """``"g-.../"`` when ``release.json`` at the location names a generation folder that holds the release
        (an object-store build), else ``""``; found once per store."""
        if self._prefix is None:
            from chammi_data.store.generation import find_generation

            self._prefix = ""  # while looking, files are read from the root
            self._prefix, self._root_release = find_generation(self)
        return self._prefix

    @property
    def location(self) -> Path | str:
        """Where the release is, as users name it: a ``Path`` for a local folder, else the URL."""
        return Path(self.url) if self.is_local else self.url

    @property
    def local_root(self) -> Path:
        """The release folder of a local store (``ValueError`` for a remote one)."""
        if not self.is_local:
            raise ValueError(f"{self.url} is not a local folder")
        return Path(self.url) / self.generation_prefix()

    def credentials(self) -> str:
        """Where this store's credentials come from, in words (no secrets)."""
        return credentials_source(self.protocol, self.storage_options)

    # -- pickling: never the connections, never the secrets in a repr -------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        names = ("url", "storage_options", "cache_dir", "retry", "ranges_ignored")
        state = {name: getattr(self, name) for name in names}
        state["prefix"] = self._prefix  # a worker reads the generation its parent resolved
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"], state["storage_options"], state["cache_dir"], state["retry"])  # type: ignore[misc]
        self.ranges_ignored = bool(state.get("ranges_ignored", False))
        self._prefix = state.get("prefix")

    def _check_pid(self) -> None:
        if self._pid != os.getpid():  # forked: descriptors and event loops belong to the parent
            self._fs, self._obstore, self._pid = None, False, os.getpid()

    @property
    def fs(self) -> Any:
        """The fsspec filesystem of a remote store (created on first use in each process)."""
        self._check_pid()
        if self._fs is None:
            import fsspec

            try:
                fs = fsspec.filesystem(self.protocol, skip_instance_cache=True, **self._fs_options())
                self._fs = limit_client_retries(fs)
            except ImportError as exc:
                extra = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "http": "http", "https": "http"}
                hint = f" (pip install 'chammi[{extra[self.protocol]}]')" if self.protocol in extra else ""
                raise ImportError(
                    f"reading {self.url} needs the fsspec backend for {self.protocol}://{hint}: {exc}"
                ) from None
        return self._fs

    @property
    def obstore(self) -> ObstoreReader | None:
        """The obstore reader of the ranged reads of an ``s3://`` store where obstore serves them (created on
        first use in each process; :mod:`chammi_data.store.obstore_client`), else None: fsspec reads."""
        self._check_pid()
        if self._obstore is False:
            self._obstore = (
                None
                if self._fs_given
                else obstore_reader(self.protocol, self.url, self.storage_options, self.retry)
            )
        return self._obstore  # type: ignore[return-value]

    def _fs_options(self) -> dict[str, Any]:
        """storage_options plus bounded requests (timeouts, one attempt per client call) where the user gave
        none (:func:`chammi_data.store.remote.client_options`)."""
        return client_options(self.protocol, self.storage_options, self.retry)

    # -- remote calls: a deadline, retries, errors that name the object ------------------------------------
    def _remote(
        self, what: str, rel: str, method: str, *args: Any, nbytes: int | None = None, **kw: Any
    ) -> Any:
        """``fs.<method>(<path of rel>, *args, **kw)`` under the store's :class:`RetryPolicy`."""
        path = self.fs._strip_protocol(self.path(rel))
        return call_with_retries(
            self.retry,
            self.path(rel),
            what,
            lambda left: call_fs(self.fs, method, path, *args, limit=left, **kw),
            self.credentials,
            nbytes,
        )

    # -- reads -----------------------------------------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        """True when the file ``rel`` exists (a missing remote object is False, a refused one an error)."""
        if self.is_local:
            return os.path.isfile(self.path(rel))
        try:
            self._remote("stat", rel, "info")
        except RemoteObjectError as exc:
            if exc.missing:
                return False
            raise
        return True

    def size(self, rel: str) -> int | None:
        """Bytes in the file ``rel`` (None where a remote server does not say)."""
        if self.is_local:
            return os.path.getsize(self.path(rel))
        size = self._remote("stat", rel, "info").get("size")
        return int(size) if isinstance(size, int) else None

    def read_bytes(self, rel: str, what: str = "read", nbytes: int | None = None) -> bytes:
        """A whole file of the release (manifest, release.json, a shard); ``nbytes``: its size when known
        (a larger read gets a longer deadline)."""
        if rel == "release.json" and self._root_release is not None:
            return self._root_release
        if self.is_local:
            with open(self.path(rel), "rb") as fh:
                return fh.read()
        return self._remote(what, rel, "cat_file", nbytes=nbytes)

    def open(self, rel: str, block_size: int = 8 << 20) -> Any:
        """A binary file object for reading ``rel`` front to back (a large table, parsed as a stream): the
        file itself locally; remotely an fsspec file reading ``block_size`` bytes per request (opening it is
        retried like every remote call; its reads have the client's per-request timeouts). Close it after
        use."""
        if self.is_local:
            return open(self.path(rel), "rb")  # noqa: SIM115 (the caller closes it)
        return self._remote("open", rel, "open", "rb", block_size=block_size)

    def read_range(self, rel: str, offset: int, length: int) -> bytes:
        """``length`` bytes of ``rel`` from ``offset``: a ``pread`` locally (descriptors kept open), one
        ranged request remotely, or a ``pread`` of the cached shard when a cache is set. Short reads are not
        padded."""
        data = self.read_range_view(rel, offset, length)
        return data if isinstance(data, bytes) else bytes(data)

    def read_range_view(self, rel: str, offset: int, length: int) -> bytes | memoryview:
        """:meth:`read_range` without copying obstore's buffer (a ``memoryview`` of it), for hot paths."""
        if not self.is_local and self.cache_dir is not None and rel.endswith(".tar"):
            return self._pread(str(self.local_path(rel)), offset, length)
        if self.is_local:
            return self._pread(self.path(rel), offset, length)
        data, whole = self.fetch_range(rel, offset, length)
        return data[offset : offset + length] if whole else data

    def read_suffix(self, rel: str, length: int) -> bytes | memoryview:
        """The last ``length`` bytes of ``rel`` (the whole file when it is shorter)."""
        if self.is_local:
            with open(self.path(rel), "rb") as fh:
                fh.seek(max(0, os.fstat(fh.fileno()).st_size - length))
                return fh.read()
        data, whole = self.fetch_range(rel, -length, length)
        return data[-length:] if whole else data

    def fetch_range(self, rel: str, offset: int, length: int) -> tuple[bytes | memoryview, bool]:
        """One ranged request (``offset < 0``: the last ``length`` bytes) and whether the server sent the
        whole object instead: a server that ignores ``Range`` answers 200 with everything, which the caller
        cuts (said once per store, see :meth:`check_ranges`)."""
        if length <= 0:
            return b"", False
        start, end = (offset, None) if offset < 0 else (offset, offset + length)
        what = (
            f"read the last {length} bytes" if offset < 0 else f"read bytes {offset}..{offset + length - 1}"
        )
        fast = self.obstore
        if fast is not None:
            key = self.generation_prefix() + rel  # obstore keys: relative to the location
            data = memoryview(
                call_with_retries(
                    self.retry,
                    self.path(rel),
                    what,
                    lambda left: fast.get_range(key, start, end, left),
                    self.credentials,
                    length,
                )
            )
        else:
            data = self._remote(what, rel, "cat_file", start=start, end=end, nbytes=length)
        whole = len(data) > length
        if whole and not self.ranges_ignored:
            self.ranges_ignored = True
            log.warning(
                "%s: the server ignores Range requests (asked for %d bytes, it sent %d): reads are correct "
                "but each downloads whole files; serve the release with Range support, or set cache_dir",
                self.url,
                length,
                len(data),
            )
        return data, whole

    def check_ranges(self) -> bool:
        """Whether the server honours ``Range`` (one 1-byte request for ``release.json`` over HTTP; other
        stores always do). A server that does not is said once, here, in the process that opened the store,
        rather than once in every DataLoader worker."""
        if self.protocol in ("http", "https") and not self.ranges_ignored:
            try:
                self.fetch_range("release.json", 0, 2)
            except RemoteObjectError as exc:
                if not exc.missing:
                    raise
        return not self.ranges_ignored

    def _pread(self, path: str, offset: int, length: int) -> bytes:
        self._check_pid()
        return POOL.pread(self._fd_token, path, offset, length)

    def read_shard(self, rel: str) -> bytes:
        """A whole shard in one read (one streaming GET remotely, its deadline set by its size; from the
        cache when one is set)."""
        if not self.is_local and self.cache_dir is not None:
            return Path(self.local_path(rel)).read_bytes()
        if self.is_local:
            return self.read_bytes(rel)
        return self.read_bytes(rel, what="read shard", nbytes=self.size(rel))

    def glob(self, pattern: str) -> list[str] | None:
        """Release-relative paths of the files matching ``pattern`` (e.g. ``shards/*/*.tar``), sorted; None
        where the location cannot list files (plain HTTP)."""
        if self.is_local:
            root = self.local_root
            return sorted(p.relative_to(root).as_posix() for p in root.glob(pattern) if p.is_file())
        if self.protocol in ("http", "https"):
            return None
        base = self.fs._strip_protocol(self.path("")).rstrip("/")
        found = call_with_retries(
            self.retry,
            self.path(pattern),
            "list files",
            lambda left: call_fs(self.fs, "glob", f"{base}/{pattern}", limit=left),
            self.credentials,
        )
        return sorted(str(p)[len(base) + 1 :] for p in found)

    # -- the shard cache (chammi_data.store.cache.ShardCache) -------------------------------------------
    def cache_root(self) -> Path:
        """This location's folder in the cache (its generation's, for a bucket release)."""
        if self.cache_dir is None:
            raise ValueError("no cache_dir set")
        tag = hashlib.sha256((self.url + "|" + self.generation_prefix()).encode()).hexdigest()[:16]
        return self.cache_dir / tag

    def cache_path(self, rel: str) -> Path:
        """Where shard ``rel`` of this location lives in the cache."""
        return self.cache_root() / rel

    def local_path(self, rel: str) -> Path:
        """A local file holding ``rel``: the file itself for a local store; for a remote one the cached copy,
        downloaded when missing and checked against ``release.json`` once per process before its first use
        (:class:`~chammi_data.store.cache.ShardCache`)."""
        if self.is_local:
            return Path(self.path(rel))
        if self.cache_dir is None:
            raise ValueError(f"{self.path(rel)} is remote and no cache_dir is set")
        self._check_pid()
        if self._cache is None:
            self._cache = ShardCache(self, DOWNLOAD_CHUNK)
        return self._cache.local_path(rel)

    def close(self) -> None:
        """Close the open file descriptors of this process."""
        POOL.close_token(self._fd_token)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def open_store(
    location: Any = None,
    storage_options: Mapping[str, Any] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> ReleaseStore:
    """A :class:`ReleaseStore` for ``location`` (a store is returned as is when no option changes it)."""
    if isinstance(location, ReleaseStore) and storage_options is None and cache_dir is None:
        return location
    return ReleaseStore(location, storage_options, cache_dir)


class OnRelease:
    """Base of the objects that read one release through ``self.store`` (a :class:`ReleaseStore` their entry
    point opened once): ``root`` is where that release is."""

    store: ReleaseStore

    @property
    def root(self) -> Path | str:
        """The release location: a ``Path`` for a local release, else its URL."""
        return self.store.location


def require_store(store: Any, who: str) -> ReleaseStore:
    """``store`` itself when it is a :class:`ReleaseStore`; inner layers take a store, never a location."""
    if not isinstance(store, ReleaseStore):
        raise TypeError(
            f"{who} takes a ReleaseStore (open one with open_store(location)), not {type(store).__name__}"
        )
    return store
