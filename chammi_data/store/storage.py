"""Where a release lives: a local folder or any fsspec location, read with retries and an optional shard
cache.

A release is named by a *location*: a local path, ``file://``, ``s3://``, ``gs://``, ``http(s)://``, any other
fsspec URL, or an ``fsspec`` mapper. :class:`ReleaseStore` is the one object every reader uses to get at its
files, so a reader never calls ``open``/``os.pread`` on a release itself:

- :meth:`~ReleaseStore.read_bytes` (whole small files: manifest, release.json),
  :meth:`~ReleaseStore.read_range` (one cell: a ``pread`` locally, one ranged GET remotely),
  :meth:`~ReleaseStore.read_shard` (a whole shard in one streaming GET) and :meth:`~ReleaseStore.local_path`
  (a shard as a local file, from the cache);
- remote reads are retried with exponential backoff on timeouts, connection resets and 5xx answers; after the
  last attempt :class:`RemoteReadError` names the URL, what was being read and the attempt count. A missing
  object or a refused one (403/404) is not retried: the error names the object and the credentials source
  that was used (never a secret);
- ``cache_dir``: whole shards are downloaded once into ``cache_dir/<location hash>/`` and checked against the
  sha256 that ``release.json`` records before use; a bad download is fetched once more, then an error. A
  cached shard that fails the check is never read.

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
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from chammi_data.store.credentials import credentials_source
from chammi_data.store.paths import default_release_location, file_sha256, protocol_of, strip_file_scheme

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Shard files a store keeps open for ``pread`` (the oldest is closed beyond this).
MAX_OPEN_FILES = 64


class ReleaseNotFoundError(FileNotFoundError):
    """No release at the given location; the message says what was looked for and what to do."""


class RemoteObjectError(FileNotFoundError):
    """A remote object is missing (``missing``) or access to it was refused (not retried); names the object
    and the credentials source."""

    def __init__(self, message: str, missing: bool = False) -> None:
        super().__init__(message)
        self.missing = missing


class RemoteReadError(OSError):
    """A remote read still failed after every retry; names the URL, what was read and the attempt count."""


@dataclass(frozen=True)
class RetryPolicy:
    """How remote reads are retried: ``attempts`` in all, sleeping ``backoff * 2**k`` (at most
    ``max_backoff``) seconds between them; ``timeout`` is the per-request timeout in seconds given to the
    filesystem."""

    attempts: int = 5
    backoff: float = 0.2
    max_backoff: float = 5.0
    timeout: float = 60.0


def _status(exc: BaseException) -> int | None:
    """The HTTP status behind an exception, when it carries one (aiohttp, botocore)."""
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        return status
    response = getattr(exc, "response", None)
    if isinstance(response, Mapping):
        code = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        if isinstance(code, int):
            return code
    return None


#: Exception class names of the storage clients for "no credentials at all" (botocore, google-auth, azure):
#: not a transient fault, so never retried.
NO_CREDENTIALS = (
    "NoCredentialsError",
    "PartialCredentialsError",
    "DefaultCredentialsError",
    "ClientAuthenticationError",
)


def _no_credentials(exc: BaseException) -> bool:
    """True when ``exc`` (or what it was raised from) says that no usable credentials were found."""
    seen = 0
    while exc is not None and seen < 5:
        if type(exc).__name__ in NO_CREDENTIALS:
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1  # type: ignore[assignment]
    return False


def _refused(exc: BaseException) -> bool:
    """Errors that another attempt cannot fix: missing objects, refused access, no credentials."""
    if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError | NotADirectoryError):
        return True
    if _no_credentials(exc):
        return True
    status = _status(exc)
    return status is not None and 400 <= status < 500 and status not in (408, 429)


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
        self._pid = os.getpid()
        self._fds: dict[str, int] = {}
        self._verified: set[str] = set()
        self._shard_sums: dict[str, str] | None = None
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
        state = {name: getattr(self, name) for name in ("url", "storage_options", "cache_dir", "retry")}
        state["prefix"] = self._prefix  # a worker reads the generation its parent resolved
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"], state["storage_options"], state["cache_dir"], state["retry"])  # type: ignore[misc]
        self._prefix = state.get("prefix")

    def _check_pid(self) -> None:
        if self._pid != os.getpid():  # forked: descriptors and event loops belong to the parent
            self._fds, self._fs, self._pid = {}, None, os.getpid()

    @property
    def fs(self) -> Any:
        """The fsspec filesystem of a remote store (created on first use in each process)."""
        self._check_pid()
        if self._fs is None:
            import fsspec

            try:
                self._fs = fsspec.filesystem(self.protocol, skip_instance_cache=True, **self._fs_options())
            except ImportError as exc:
                extra = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "http": "http", "https": "http"}
                hint = f" (pip install 'chammi[{extra[self.protocol]}]')" if self.protocol in extra else ""
                raise ImportError(
                    f"reading {self.url} needs the fsspec backend for {self.protocol}://{hint}: {exc}"
                ) from None
        return self._fs

    def _fs_options(self) -> dict[str, Any]:
        """storage_options plus request timeouts where the user gave none."""
        opts = dict(self.storage_options)
        t = self.retry.timeout
        if self.protocol in ("http", "https"):
            import aiohttp

            ck = dict(opts.get("client_kwargs") or {})
            ck.setdefault("timeout", aiohttp.ClientTimeout(total=None, sock_connect=t, sock_read=t))
            opts["client_kwargs"] = ck
        elif self.protocol in ("s3", "s3a"):
            cfg = dict(opts.get("config_kwargs") or {})
            cfg.setdefault("connect_timeout", t)
            cfg.setdefault("read_timeout", t)
            opts["config_kwargs"] = cfg
        return opts

    # -- remote calls with retries ---------------------------------------------------------------------------
    def _remote(self, what: str, rel: str, call: Callable[[], T]) -> T:
        policy = self.retry
        url = self.path(rel)
        for attempt in range(1, policy.attempts + 1):
            try:
                return call()
            except Exception as exc:
                if _refused(exc):
                    status = _status(exc)
                    if _no_credentials(exc):
                        raise RemoteObjectError(
                            f"{url}: {what}: no credentials found ({type(exc).__name__}); credentials: "
                            f"{self.credentials()}; for a public bucket pass storage_options={{'anon': True}}"
                        ) from exc
                    kind = "not found" if isinstance(exc, FileNotFoundError) or status == 404 else "refused"
                    code = f" (HTTP {status})" if status else ""
                    raise RemoteObjectError(
                        f"{url}: {what}: object {kind}{code}; credentials: {self.credentials()}",
                        missing=kind == "not found",
                    ) from exc
                if attempt == policy.attempts:
                    raise RemoteReadError(
                        f"{url}: {what} failed after {attempt} attempts: {type(exc).__name__}: {exc}"
                    ) from exc
                delay = min(policy.max_backoff, policy.backoff * 2 ** (attempt - 1))
                log.warning(
                    "%s: %s failed (attempt %d of %d: %s: %s); retrying in %.1f s",
                    url,
                    what,
                    attempt,
                    policy.attempts,
                    type(exc).__name__,
                    exc,
                    delay,
                )
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _remote_path(self, rel: str) -> str:
        return self.fs._strip_protocol(self.path(rel))

    # -- reads
    # -------------------------------------------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        """True when the file ``rel`` exists (a missing remote object is False, a refused one an error)."""
        if self.is_local:
            return os.path.isfile(self.path(rel))
        try:
            self._remote("stat", rel, lambda: self.fs.info(self._remote_path(rel)))
        except RemoteObjectError as exc:
            if exc.missing:
                return False
            raise
        return True

    def read_bytes(self, rel: str, what: str = "read") -> bytes:
        """A whole file of the release (manifest, release.json, a shard)."""
        if rel == "release.json" and self._root_release is not None:
            return self._root_release
        if self.is_local:
            with open(self.path(rel), "rb") as fh:
                return fh.read()
        return self._remote(what, rel, lambda: self.fs.cat_file(self._remote_path(rel)))

    def open(self, rel: str, block_size: int = 8 << 20) -> Any:
        """A binary file object for reading ``rel`` front to back (a large table, parsed as a stream): the
        file itself locally; remotely an fsspec file reading ``block_size`` bytes per request (opening it is
        retried like every remote call). Close it after use."""
        if self.is_local:
            return open(self.path(rel), "rb")  # noqa: SIM115 (the caller closes it)
        return self._remote(
            "open", rel, lambda: self.fs.open(self._remote_path(rel), "rb", block_size=block_size)
        )

    def read_range(self, rel: str, offset: int, length: int) -> bytes:
        """``length`` bytes of ``rel`` from ``offset``: a ``pread`` locally (descriptors kept open), one
        ranged request remotely, or a ``pread`` of the cached shard when a cache is set. Short reads are not
        padded."""
        if not self.is_local and self.cache_dir is not None and rel.endswith(".tar"):
            return self._pread(str(self.local_path(rel)), offset, length)
        if self.is_local:
            return self._pread(self.path(rel), offset, length)
        data = self._remote(
            f"read bytes {offset}..{offset + length - 1}",
            rel,
            lambda: self.fs.cat_file(self._remote_path(rel), start=offset, end=offset + length),
        )
        if len(data) > length:  # a server that ignores Range sends the whole object
            data = data[offset : offset + length]
        return data

    def _pread(self, path: str, offset: int, length: int, max_open: int = MAX_OPEN_FILES) -> bytes:
        self._check_pid()
        fd = self._fds.get(path)
        if fd is None:
            if len(self._fds) >= max_open:
                os.close(self._fds.pop(next(iter(self._fds))))
            fd = os.open(path, os.O_RDONLY)
            self._fds[path] = fd
        return os.pread(fd, length, offset)

    def read_shard(self, rel: str) -> bytes:
        """A whole shard in one read (one streaming GET remotely; from the cache when one is set)."""
        if not self.is_local and self.cache_dir is not None:
            return Path(self.local_path(rel)).read_bytes()
        return self.read_bytes(rel, what="read shard")

    def glob(self, pattern: str) -> list[str] | None:
        """Release-relative paths of the files matching ``pattern`` (e.g. ``shards/*/*.tar``), sorted; None
        where the location cannot list files (plain HTTP)."""
        if self.is_local:
            root = self.local_root
            return sorted(p.relative_to(root).as_posix() for p in root.glob(pattern) if p.is_file())
        if self.protocol in ("http", "https"):
            return None
        base = self._remote_path("")
        found = self._remote("list files", pattern, lambda: self.fs.glob(f"{base.rstrip('/')}/{pattern}"))
        return sorted(str(p)[len(base.rstrip("/")) + 1 :] for p in found)

    # -- the shard cache
    # -----------------------------------------------------------------------------------------
    def shard_sha256(self, rel: str) -> str | None:
        """The sha256 ``release.json`` records for shard ``rel`` (None when it records none)."""
        if self._shard_sums is None:
            import json

            try:
                self._shard_sums = dict(json.loads(self.read_bytes("release.json")).get("shards") or {})
            except FileNotFoundError:
                self._shard_sums = {}
        return self._shard_sums.get(rel)

    def cache_path(self, rel: str) -> Path:
        """Where shard ``rel`` of this location lives in the cache."""
        if self.cache_dir is None:
            raise ValueError("no cache_dir set")
        tag = hashlib.sha256((self.url + "|" + self.generation_prefix()).encode()).hexdigest()[:16]
        return self.cache_dir / tag / rel

    def local_path(self, rel: str) -> Path:
        """A local file holding ``rel``: the file itself for a local store; for a remote one the cached copy,
        downloaded when missing and checked against ``release.json`` once per process before its first use."""
        if self.is_local:
            return Path(self.path(rel))
        if self.cache_dir is None:
            raise ValueError(f"{self.path(rel)} is remote and no cache_dir is set")
        path = self.cache_path(rel)
        key = str(path)
        if key in self._verified:
            return path
        expected = self.shard_sha256(rel)
        if path.is_file() and (expected is None or file_sha256(path) == expected):
            self._verified.add(key)
            return path
        for attempt in (1, 2):
            got = self._download(rel, path)
            if expected is None or got == expected:
                self._verified.add(key)
                return path
            log.warning(
                "%s: download %d has sha256 %s, release.json records %s",
                self.path(rel),
                attempt,
                got,
                expected,
            )
        path.unlink(missing_ok=True)
        raise RemoteReadError(
            f"{self.path(rel)}: the downloaded shard does not match the sha256 in release.json "
            f"after 2 downloads (got {got}, expected {expected}); the cached copy was removed"
        )

    def _download(self, rel: str, path: Path) -> str:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = self.read_bytes(rel, what="download shard")
        tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex}.tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return hashlib.sha256(data).hexdigest()

    def close(self) -> None:
        """Close the open file descriptors of this process."""
        if self._pid == os.getpid():
            for fd in self._fds.values():
                os.close(fd)
        self._fds = {}

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
