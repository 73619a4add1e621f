"""A location a build writes into (and reads raw data from): a local folder or any fsspec object store.

:class:`ObjectStore` is a :class:`~chammi_data.store.storage.ReleaseStore` (reads with retries, deadlines and
errors that name the object and the credentials source) that can also list, write and delete:

- **whole objects, atomically**: :meth:`~ObjectStore.put`, :meth:`~ObjectStore.put_file` and the
  :meth:`~ObjectStore.writer` context (a file object; the object appears when the block ends without an
  error, never in part). Locally a temp file in the target folder is renamed into place. Remotely an object
  up to :data:`MULTIPART_THRESHOLD` is one PUT; a larger one is a multipart upload of :data:`PART_SIZE`
  parts, each retried, and the upload is aborted when anything fails, so no hidden parts are left to pay
  for. :meth:`~ObjectStore.abort_uploads` aborts what a killed process left.
- **conditional writes** for locks: :meth:`~ObjectStore.create` (create only if absent: ``If-None-Match: *``
  on S3, an exclusive hard link locally) and :meth:`~ObjectStore.replace` (only if the object still has the
  ETag the caller read: ``If-Match``). :attr:`~ObjectStore.conditional_writes` says whether the location has
  them (S3 and local folders do; for others see ``pipelines.engine.output_store``).
- **listing and deletion**: :meth:`~ObjectStore.list_files` (recursive, release-relative paths; plain HTTP
  cannot list), :meth:`~ObjectStore.delete`, :meth:`~ObjectStore.delete_prefix`.

Writes to ``http(s)://`` are refused (a web server is read-only). Transient faults (timeouts, resets, 5xx) are
retried like reads, each attempt cancelled at the deadline; a refused write names the object and the
credentials source.

On ``s3://`` whole reads, :meth:`~ObjectStore.info`, single-part writes and :meth:`~ObjectStore.read_many` go
through obstore where it serves the location (:func:`chammi_data.store.obstore_client.shared_client`), at a
third of s3fs's client CPU per request; listing, deletion, conditional writes, multipart uploads and other
protocols stay with fsspec.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

from chammi_data.store.credentials import client_environment
from chammi_data.store.obstore_client import ObstoreReader, shared_client
from chammi_data.store.remote import call_with_retries
from chammi_data.store.storage import ReleaseStore, RemoteObjectError, RetryPolicy

T = TypeVar("T")

#: objects larger than this go in parts (S3: parts of at least 5 MiB but the last); one PUT (obstore's) of a
#: 32 MiB shard took half the time and server CPU of 4 parts against moto
MULTIPART_THRESHOLD = 64 << 20
#: part size of a multipart upload
PART_SIZE = 8 << 20
#: a :meth:`ObjectStore.writer` keeps this much in memory before it spills to a local temp file
SPOOL_BYTES = 32 << 20
#: protocols that can be read but never written
READ_ONLY = ("http", "https")


#: filesystems shared by the stores of one process, by (process, protocol, options): a dask task receives its
#: stores pickled, and a new S3 client per task would cost a fraction of a second each
_SHARED_FS: dict[tuple[int, str, str, str], Any] = {}


class ReadOnlyLocation(ValueError):
    """A location that cannot be written (``http(s)://``); the message names it and what to use instead."""


class ListingUnsupported(ValueError):
    """The location cannot list its files (plain HTTP): inputs there must name every file in their tables."""


class ObjectStore(ReleaseStore):
    """Read, list, write and delete objects under one location (see the module docstring).

    ``location``: a local path, ``file://``, or an fsspec URL (``s3://bucket/prefix``, ``gs://...``,
    ``memory://...``, ``https://...`` read-only); ``storage_options`` go to fsspec as they are (``anon: true``
    for a public bucket); credentials otherwise come from the standard chains of each process that uses the
    store. Pickles without connections or open files, so it travels to dask workers.
    """

    def __init__(
        self,
        location: Any = None,
        storage_options: Mapping[str, Any] | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        super().__init__(location, storage_options, None, retry)

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "storage_options": self.storage_options, "retry": self.retry}

    def __setstate__(self, state: dict[str, Any]) -> None:
        type(self).__init__(self, state["url"], state["storage_options"], state["retry"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    def _fs_key(self) -> tuple[int, str, str, str]:
        return (
            os.getpid(),
            self.protocol,
            repr(sorted((str(k), repr(v)) for k, v in self.storage_options.items())),
            client_environment(),  # a client made for another endpoint or identity is not reused
        )

    @property
    def fs(self) -> Any:
        """The fsspec filesystem, shared with the other stores of this process that use the same options."""
        self._check_pid()
        if self._fs is None:
            key = self._fs_key()
            cached = _SHARED_FS.get(key)
            if cached is None:
                cached = _SHARED_FS[key] = ReleaseStore.fs.fget(self)  # type: ignore[attr-defined]
            self._fs = cached
        return self._fs

    def _forget_listing(self, rel: str) -> None:
        """After a write past fsspec: drop what this process's filesystem (if any: a worker that only uses
        obstore never makes one) may have listed of ``rel``'s folder."""
        self._check_pid()
        fs = self._fs if self._fs is not None else _SHARED_FS.get(self._fs_key())
        if fs is not None:
            fs.invalidate_cache(fs._strip_protocol(self.path(rel)))

    # -- names -----------------------------------------------------------------------------------------
    def generation_prefix(self) -> str:
        """A writer (or a raw input) addresses its location's objects as they are: no release generation."""
        return ""

    def child(self, rel: str) -> ObjectStore:
        """The store of the sub-location ``rel`` (same options)."""
        return type(self)(self.path(rel.strip("/")), self.storage_options, self.retry)

    def rel_of(self, location: str) -> str | None:
        """``location`` (a full path or URL) relative to this store's root, or None when it lies outside."""
        text = str(location)
        if self.is_local:
            if "://" in text and not text.lower().startswith("file://"):
                return None
            path = os.path.abspath(text[7:] if text.lower().startswith("file://") else text)
            root = self.url.rstrip(os.sep) + os.sep
            return Path(path).relative_to(self.url).as_posix() if path.startswith(root) else None
        root = self.url.rstrip("/") + "/"
        return text[len(root) :] if text.startswith(root) else None

    def retrying(self, what: str, rel: str, call: Callable[[], T]) -> T:
        """``call()`` (a client call on ``rel``) under the store's :class:`RetryPolicy`: retried on timeouts,
        resets and 5xx within the deadline; refused or missing objects are one :class:`RemoteObjectError`."""
        return call_with_retries(self.retry, self.path(rel), what, lambda _left: call(), self.credentials)

    def _timed(self, what: str, rel: str, call: Callable[[float], T], nbytes: int | None = None) -> T:
        """:meth:`retrying` for a call that takes the seconds left (obstore's): each attempt is cancelled
        when the deadline passes, whatever the server does."""
        return call_with_retries(self.retry, self.path(rel), what, call, self.credentials, nbytes)

    @property
    def client(self) -> ObstoreReader | None:
        """obstore's client of this store's bucket (keys: :meth:`bucket_key`), else None: fsspec serves it."""
        if self.is_local or self._fs_given or self.protocol not in ("s3", "s3a"):
            return None
        self._check_pid()
        return shared_client(self.protocol, self.bucket_key("")[0], self.storage_options, self.retry)

    def bucket_key(self, rel: str) -> tuple[str, str]:
        """(bucket, key in it) of ``rel`` on an object store."""
        bucket, _, key = self.path(rel).split("://", 1)[1].partition("/")
        return bucket, key

    def _fast(self, rel: str) -> tuple[ObstoreReader, str] | None:
        """(obstore's client, the key of ``rel``) where obstore serves ``rel``, else None: obstore cannot name
        a key with an empty, ``.`` or ``..`` segment (``a//b``, ``./a``), which S3 and s3fs allow."""
        client = self.client
        if client is None:
            return None
        key = self.bucket_key(rel)[1]
        return None if any(p in ("", ".", "..") for p in key.split("/")) else (client, key)

    def key(self, rel: str) -> str:
        """The filesystem path of ``rel`` as fsspec names it (no protocol) - or the local path."""
        return self.path(rel) if self.is_local else self.fs._strip_protocol(self.path(rel))

    @property
    def conditional_writes(self) -> bool:
        """True when :meth:`create` / :meth:`replace` are atomic on this location (local folders, S3)."""
        return self.is_local or self.protocol in ("s3", "s3a")

    def _writable(self) -> None:
        if self.protocol in READ_ONLY:
            raise ReadOnlyLocation(
                f"{self.url} cannot be written: an HTTP server is read-only; write to a folder or an object "
                "store (s3://, gs://, ...) and serve that"
            )

    # -- listing ---------------------------------------------------------------------------------------
    @property
    def can_list(self) -> bool:
        """False for plain HTTP, which has no listing."""
        return self.protocol not in READ_ONLY

    def list_files(self, prefix: str = "") -> list[str]:
        """Paths (relative to the root, ``/``-separated, sorted) of every file under ``prefix``; [] when
        nothing is there. :class:`ListingUnsupported` over plain HTTP."""
        if self.is_local:
            base = Path(self.path(prefix)) if prefix else Path(self.url)
            if base.is_file():
                return [prefix.strip("/")]
            root = Path(self.url)
            return sorted(p.relative_to(root).as_posix() for p in base.rglob("*") if p.is_file())
        if not self.can_list:
            raise ListingUnsupported(f"{self.path(prefix)}: a plain HTTP location cannot list its files")
        base = self.key(prefix).rstrip("/")
        root = self.key("").rstrip("/")
        try:
            found = self.retrying("list files", prefix, lambda: self.fs.find(base, withdirs=False))
        except RemoteObjectError as exc:
            if exc.missing:
                return []
            raise
        return sorted(str(p)[len(root) + 1 :] for p in found if str(p).startswith(root + "/"))

    def info(self, rel: str) -> dict[str, Any] | None:
        """``{"size", "etag"}`` of the object ``rel`` (ETag as the store gives it; locally mtime and size), or
        None when it does not exist."""
        if self.is_local:
            try:
                st = os.stat(self.path(rel))
            except (FileNotFoundError, NotADirectoryError):
                return None
            return {"size": st.st_size, "etag": f"{st.st_mtime_ns}-{st.st_size}-{st.st_ino}"}
        fast = self._fast(rel)
        try:
            if fast is not None:
                client, key = fast
                return self._timed("stat", rel, lambda left: client.head(key, left))
            meta = self.retrying("stat", rel, lambda: self.fs.info(self.key(rel), refresh=True))
        except RemoteObjectError as exc:
            if exc.missing:
                return None
            raise
        size = int(meta.get("size") or 0)
        etag = meta.get("ETag") or meta.get("etag") or meta.get("generation")
        if not etag:  # a store without ETags: the modification time and size stand in for one
            stamp = meta.get("mtime") or meta.get("LastModified") or meta.get("created") or ""
            etag = f"{stamp}-{size}"
        return {"size": size, "etag": str(etag)}

    def exists(self, rel: str) -> bool:
        """True when the object ``rel`` exists (one HEAD through obstore where it serves ``rel``)."""
        if self._fast(rel) is None:
            return super().exists(rel)
        return self.info(rel) is not None

    def read_object(self, rel: str, what: str = "read") -> bytes:
        """A whole object in one request (no size request first), retried; errors name the object."""
        if self.is_local:
            return self.read_bytes(rel, what)
        fast = self._fast(rel)
        if fast is not None:
            client, key = fast
            return bytes(self._timed(what, rel, lambda left: client.get(key, left)))
        return self.retrying(what, rel, lambda: self.fs.cat_file(self.key(rel), start=self._whole))

    @property
    def _whole(self) -> int | None:
        """fsspec's ``start`` of a whole read: none on S3 (``bytes=0-`` of an empty object: 416), else 0."""
        return None if self.protocol in ("s3", "s3a") else 0

    def read_many(self, items: Sequence[tuple[str, int, int | None]]) -> list[bytes | BaseException]:
        """Bytes ``[start, end)`` of each (rel, start, end) (``end`` None: to the end; ``start<0``:
        the last ``-start`` bytes), fetched concurrently, not retried: a failed item is its exception in the
        list (the caller reads it again alone, with retries and an error naming it)."""
        if not items:
            return []
        fast = [self._fast(rel) for rel, _, _ in items]
        try:
            if all(f is not None for f in fast):
                client = fast[0][0]  # type: ignore[index]  # one client: the store's bucket
                keys = [(f[1], start, end) for f, (_, start, end) in zip(fast, items, strict=True) if f]
                got = client.get_many(keys, self.retry.budget())
            else:
                keys2 = [self.key(rel) for rel, _, _ in items]
                starts = [self._whole if (s, e) == (0, None) else s for _, s, e in items]
                got = self.fs.cat_ranges(keys2, starts, [end for _, _, end in items], on_error="return")
        except Exception as exc:  # the whole round failed (its deadline): each item is read again alone
            return [exc] * len(items)
        return [x if isinstance(x, BaseException) else bytes(x) for x in got]

    # -- writing ---------------------------------------------------------------------------------------
    def _temp_beside(self, rel: str) -> tuple[Path, Path]:
        """(the local file ``rel``, a temp name beside it: ``.<name>.<pid>-<id>.tmp``), its folder made."""
        path = Path(self.path(rel))
        path.parent.mkdir(parents=True, exist_ok=True)
        return path, path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex}.tmp")

    @contextlib.contextmanager
    def writer(self, rel: str) -> Iterator[IO[bytes]]:
        """``with store.writer("shards/a.tar") as fh: fh.write(...)``: the object appears, whole, when the
        block ends without an error; after an error nothing is left (temp file removed, upload aborted)."""
        self._writable()
        if self.is_local:
            path, tmp = self._temp_beside(rel)
            try:
                with open(tmp, "wb") as fh:
                    yield fh
                os.replace(tmp, path)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT) and exc.filename is None:
                    raise OSError(exc.errno, os.strerror(exc.errno), str(path)) from None  # name the file
                raise
            finally:
                tmp.unlink(missing_ok=True)
            return
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as fh:
            yield fh  # type: ignore[misc]
            fh.flush()
            self._upload(rel, fh, fh.seek(0, os.SEEK_END))

    def put(self, rel: str, data: bytes) -> None:
        """Write the object ``rel`` with ``data`` (atomic: the old object or the new one, never a part)."""
        self._writable()
        if self.is_local:
            with self.writer(rel) as fh:
                fh.write(data)
            return
        self._upload(rel, io.BytesIO(data), len(data))

    def put_file(self, rel: str, local: str | os.PathLike[str]) -> None:
        """Upload (or, locally, copy) the local file ``local`` to ``rel``, atomically."""
        self._writable()
        if self.is_local:
            with self.writer(rel) as out, open(local, "rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
            return
        with open(local, "rb") as src:
            self._upload(rel, src, os.fstat(src.fileno()).st_size)

    def _upload(self, rel: str, src: IO[bytes], size: int) -> None:
        if size <= MULTIPART_THRESHOLD or self.protocol not in ("s3", "s3a"):
            src.seek(0)
            data = src.read()
            fast = self._fast(rel)
            if fast is not None:
                client, key = fast
                self._timed(f"write ({size} bytes)", rel, lambda left: client.put(key, data, left), size)
                self._forget_listing(rel)
                return
            self.retrying(f"write ({size} bytes)", rel, lambda: self.fs.pipe_file(self.key(rel), data))
            return
        bucket, key, _ = self.fs.split_path(self.key(rel))
        call = self.fs.call_s3
        upload = self.retrying(
            "start multipart upload", rel, lambda: call("create_multipart_upload", Bucket=bucket, Key=key)
        )
        uid = upload["UploadId"]
        try:
            parts = []
            src.seek(0)
            for number in range(1, -(-size // PART_SIZE) + 1):
                body = src.read(PART_SIZE)
                done = self.retrying(
                    f"upload part {number}",
                    rel,
                    lambda n=number, b=body: call(
                        "upload_part", Bucket=bucket, Key=key, UploadId=uid, PartNumber=n, Body=b
                    ),
                )
                parts.append({"PartNumber": number, "ETag": done["ETag"]})
            self.retrying(
                "complete multipart upload",
                rel,
                lambda: call(
                    "complete_multipart_upload",
                    Bucket=bucket,
                    Key=key,
                    UploadId=uid,
                    MultipartUpload={"Parts": parts},
                ),
            )
        except BaseException:
            with contextlib.suppress(Exception):  # the upload's parts would otherwise stay, hidden and billed
                call("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=uid)
            raise
        self.fs.invalidate_cache(self.key(rel))

    def abort_uploads(self, prefix: str = "") -> int:
        """Abort the unfinished multipart uploads under ``prefix`` (left by killed writers); their number."""
        if self.protocol not in ("s3", "s3a"):
            return 0
        bucket, key, _ = self.fs.split_path(self.key(prefix))
        found = self.retrying(
            "list multipart uploads",
            prefix,
            lambda: self.fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=key),
        )
        uploads = found.get("Uploads") or []
        for up in uploads:
            self.fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
        return len(uploads)

    # -- conditional writes (locks) --------------------------------------------------------------------------
    def create(self, rel: str, data: bytes) -> bool:
        """Write ``rel`` only if it does not exist; True when this call created it. Atomic where
        :attr:`conditional_writes`; elsewhere a check then a write (two creators can race)."""
        self._writable()
        if self.is_local:
            path, tmp = self._temp_beside(rel)
            try:
                tmp.write_bytes(data)
                os.link(tmp, path)  # fails when the name exists: an atomic create-if-absent with content
                return True
            except FileExistsError:
                return False
            finally:
                tmp.unlink(missing_ok=True)
        if self.conditional_writes:

            def attempt() -> bool:
                try:
                    self.fs.pipe_file(self.key(rel), data, mode="create")
                except FileExistsError:
                    return False
                return True

            # a lost answer to a create that succeeded reads as "exists" on the retry: callers that must
            # know (the build lock) read the object back and recognise their own content
            return self.retrying("create (If-None-Match: *)", rel, attempt)
        if self.info(rel) is not None:
            return False
        self.put(rel, data)
        return True

    def replace(self, rel: str, data: bytes, etag: str) -> bool:
        """Overwrite ``rel`` only if its ETag is still ``etag`` (``If-Match``); True when written, False when
        the object changed or vanished since it was read. Without conditional writes: compare, then write."""
        self._writable()
        if self.protocol in ("s3", "s3a"):
            bucket, key, _ = self.fs.split_path(self.key(rel))

            def attempt() -> bool:
                try:
                    self.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, IfMatch=etag)
                except (FileNotFoundError, FileExistsError):
                    return False
                except OSError as exc:
                    if exc.errno == errno.EINVAL and "PreconditionFailed" in repr(exc.__cause__):
                        return False
                    raise
                return True

            done = self.retrying("replace (If-Match)", rel, attempt)
            self.fs.invalidate_cache(self.key(rel))
            return done
        now = self.info(rel)
        if now is None or now["etag"] != etag:
            return False
        self.put(rel, data)
        return True

    # -- deletion ----------------------------------------------------------------------------------------
    def delete(self, rels: Iterable[str]) -> None:
        """Delete the objects ``rels`` (missing ones are ignored)."""
        self._writable()
        rels = list(rels)
        if not rels:
            return
        if self.is_local:
            for rel in rels:
                Path(self.path(rel)).unlink(missing_ok=True)
            return
        keys = [self.key(r) for r in rels]
        with contextlib.suppress(FileNotFoundError):
            self.retrying(f"delete {len(keys)} object(s)", rels[0], lambda: self.fs.rm(keys))

    def delete_prefix(self, prefix: str) -> None:
        """Delete everything under ``prefix`` (a folder locally)."""
        self._writable()
        if not prefix.strip("/"):
            raise ValueError("delete_prefix needs a prefix: refusing to delete the whole location")
        if self.is_local:
            target = Path(self.path(prefix))
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
            return
        self.delete(self.list_files(prefix))


def writable_store(location: Any, storage_options: Mapping[str, Any] | None = None) -> ObjectStore:
    """An :class:`ObjectStore` for ``location`` (returned as it is when it already is one and no options are
    given); :class:`ReadOnlyLocation` for an HTTP URL."""
    if isinstance(location, ObjectStore) and storage_options is None:
        store = location
    else:
        store = ObjectStore(location, storage_options)
    store._writable()
    return store
