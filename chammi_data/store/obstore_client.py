"""Reads of ``s3://`` releases through ``obstore`` (Rust ``object_store`` bindings) where it is installed.

Why: the stream reader's own CPU per sample from S3 was 1.35x its CPU from local disk, and a third of that
was the Python HTTP stack (asyncio socket reads, aiohttp's parser, the copy that joins a body's chunks):
``benchmarks/stream.py`` measures s3fs at 1.5-1.8 ms of client CPU per MB against 0.5 ms for obstore, whose
bodies arrive in a buffer that is handed over without a copy.

What stays the same: credentials come from botocore's chain (environment, config and credentials files,
SSO, instance role), the endpoint from ``storage_options`` or ``$AWS_ENDPOINT_URL[_S3]``, anonymous access
from ``anon``; every call runs on fsspec's event loop under the same deadline
(:func:`chammi_data.store.remote.call_with_retries`) with obstore's own retries off; errors map to the
Python kinds the retry loop knows (missing -> ``FileNotFoundError``, refused -> ``PermissionError``).
A release's reads use it for ranged reads only (the cells of ``load``, the shard runs of ``stream``, cache
downloads); whole small files (manifest, release.json), listing, ``info`` and other protocols stay with
fsspec. A build's :class:`~chammi_data.store.objects.ObjectStore` (raw inputs, spills, shards) also reads
whole objects, asks their size and ETag and writes single-part objects through it (:func:`shared_client`:
one client per bucket and process, so the stores a dask task unpickles reuse its connections); there
obstore cost a third of s3fs's client CPU per request (0.75 ms against 3.6 ms per small GET, 1.1 ms against
2.4 ms per 300 kB PUT, measured against moto on 127.0.0.1).

**Fork.** obstore runs its requests on a Tokio runtime whose threads a forked child does not have: a
DataLoader worker forked from a process that already used obstore would wait forever. Such a child reads
with fsspec instead (:data:`RUNTIME_PID` records which process started the runtime). A process that only
read the manifest before forking its workers (``load``, ``stream``, the trainer) never started it, so its
workers use obstore.

:func:`obstore_reader` returns None (use fsspec) in that case, when obstore is not installed, when
``$CHAMMI_REMOTE_CLIENT=fsspec``, when the storage options hold something this translation does not know, or
when no credentials are found (fsspec then gives its clear error).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from chammi_data.store.credentials import client_environment
from chammi_data.store.remote import RetryPolicy

#: ``fsspec`` (never obstore) or ``auto`` (obstore for s3:// when it is installed; the default).
CLIENT_ENV = "CHAMMI_REMOTE_CLIENT"
_KNOWN_OPTIONS = {"anon", "key", "secret", "token", "endpoint_url", "client_kwargs", "config_kwargs"}
#: The process whose obstore calls started its runtime (None: none yet); its forked children use fsspec.
RUNTIME_PID: list[int] = []
#: requests :meth:`ObstoreReader.get_many` keeps in flight at once
MANY_AT_ONCE = 16
#: the clients of :func:`shared_client`, by process, bucket, options, timeout and client environment
_SHARED: dict[tuple[Any, ...], Any] = {}


def _botocore_credentials() -> Any:
    import botocore.session

    return botocore.session.get_session().get_credentials()


def _credential_provider(creds: Any) -> Any:
    """An obstore credential callback over botocore's (refreshable) credentials."""

    def provide() -> dict[str, Any]:
        frozen = creds.get_frozen_credentials()
        refreshable = hasattr(creds, "refresh_needed")
        return {
            "access_key_id": frozen.access_key,
            "secret_access_key": frozen.secret_key,
            "token": frozen.token,
            "expires_at": datetime.now(UTC) + timedelta(minutes=5) if refreshable else None,
        }

    return provide


def obstore_reader(protocol: str, url: str, storage_options: Mapping[str, Any], policy: RetryPolicy) -> Any:
    """An :class:`ObstoreReader` for the release at ``url``, or None where fsspec reads it (see above)."""
    if protocol not in ("s3", "s3a") or os.environ.get(CLIENT_ENV, "auto").strip().lower() == "fsspec":
        return None
    if RUNTIME_PID and RUNTIME_PID[0] != os.getpid():  # forked after the runtime started: not usable here
        return None
    try:
        from obstore.store import S3Store
    except ImportError:
        return None
    opts = dict(storage_options)
    client_kwargs = dict(opts.get("client_kwargs") or {})
    if set(opts) - _KNOWN_OPTIONS or set(client_kwargs) - {"endpoint_url", "region_name"}:
        return None
    bucket, _, prefix = url.split("://", 1)[1].partition("/")
    endpoint = (
        opts.get("endpoint_url")
        or client_kwargs.get("endpoint_url")
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
    )
    region = (
        client_kwargs.get("region_name")
        or os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
    )
    config: dict[str, Any] = {"region": region or "us-east-1"}
    if endpoint:
        config["endpoint"] = endpoint
        config["allow_http"] = endpoint.startswith("http://")
    provider = None
    if opts.get("anon"):
        config["skip_signature"] = True
    elif opts.get("key") and opts.get("secret"):
        config.update(access_key_id=opts["key"], secret_access_key=opts["secret"])
        if opts.get("token"):
            config["token"] = opts["token"]
    else:
        creds = _botocore_credentials()
        if creds is None:
            return None
        provider = _credential_provider(creds)
    t = f"{max(1, round(policy.timeout))}s"
    store = S3Store(
        bucket,
        prefix=prefix or None,
        config=config,  # type: ignore[arg-type]  # built as a plain dict from the options above
        # the deadline is ours (wait_for on each call); obstore only notices idle connections
        client_options={"connect_timeout": t, "read_timeout": t, "timeout": "24h"},
        retry_config={"max_retries": 0, "retry_timeout": timedelta(seconds=policy.timeout)},
        credential_provider=provider,
    )
    return ObstoreReader(store)


def shared_client(
    protocol: str, bucket: str, storage_options: Mapping[str, Any], policy: RetryPolicy
) -> ObstoreReader | None:
    """The :class:`ObstoreReader` of a whole ``bucket`` (keys relative to the bucket) that the stores of this
    process with the same options share, or None where fsspec serves them (see :func:`obstore_reader`). Keyed
    by the client environment too: a client made while ``AWS_ENDPOINT_URL`` named another server is never
    reused."""
    mode = os.environ.get(CLIENT_ENV, "auto").strip().lower()
    options = repr(sorted((str(k), repr(v)) for k, v in storage_options.items()))
    key = (os.getpid(), protocol, bucket, options, policy.timeout, mode, client_environment())
    if key not in _SHARED:
        _SHARED[key] = obstore_reader(protocol, f"{protocol}://{bucket}", storage_options, policy)
    return _SHARED[key]


def _python_error(exc: BaseException) -> BaseException:
    """The Python kind of an obstore error, on one line (obstore appends a multi-line debug dump): missing ->
    ``FileNotFoundError``, refused -> ``PermissionError``, timed out -> ``TimeoutError``, anything else (a
    5xx, a reset connection) -> ``ConnectionError``, which the retry loop retries."""
    text = str(exc)
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    name = type(exc).__name__
    if name == "NotFoundError":
        return FileNotFoundError(first)
    if name in ("PermissionDeniedError", "UnauthenticatedError"):
        return PermissionError(first)
    if "TimedOut" in text or "timed out" in text.lower():
        return TimeoutError(f"{first} (timed out)")
    return ConnectionError(f"{name}: {first}")


class ObstoreReader:
    """Whole objects and byte ranges of one release's bucket prefix; ``rel`` paths as in the release."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def _call(self, coroutine_fn: Any, *args: Any, limit: float, **kwargs: Any) -> Any:
        from fsspec.asyn import get_loop, sync

        if not RUNTIME_PID:
            RUNTIME_PID.append(os.getpid())

        async def run() -> Any:
            try:
                return await coroutine_fn(self.store, *args, **kwargs)
            except Exception as exc:
                if type(exc).__module__.startswith("obstore"):
                    raise _python_error(exc) from None
                raise

        return sync(get_loop(), run, timeout=max(limit, 1e-3))

    def get(self, rel: str, limit: float) -> Any:
        """The whole object ``rel`` in one GET, as a buffer (no copy)."""

        async def whole(store: Any, path: str) -> Any:
            import obstore

            result = await obstore.get_async(store, path)
            return await result.bytes_async()

        return self._call(whole, rel, limit=limit)

    def head(self, rel: str, limit: float) -> dict[str, Any]:
        """``{"size", "etag"}`` of the object ``rel`` (one HEAD; the ETag as S3 gives it, quotes kept, as
        s3fs gives it too); ``FileNotFoundError`` when it does not exist."""
        import obstore

        meta = self._call(obstore.head_async, rel, limit=limit)
        return {"size": int(meta["size"]), "etag": meta.get("e_tag") or ""}

    def put(self, rel: str, data: Any, limit: float) -> None:
        """Write the object ``rel`` with ``data`` (bytes or a buffer) in one PUT (atomic)."""
        import obstore

        self._call(obstore.put_async, rel, data, use_multipart=False, limit=limit)

    def get_many(self, items: Sequence[tuple[str, int, int | None]], limit: float) -> list[Any]:
        """Bytes ``[start, end)`` of each (``rel``, ``start``, ``end``) (``end`` None: to the end; ``start <
        0``: the last ``-start`` bytes), :data:`MANY_AT_ONCE` requests at a time, all within ``limit``
        seconds; a failed item is its exception (the Python kind) in the list, not raised."""
        import obstore

        async def many(store: Any) -> list[Any]:
            gate = asyncio.Semaphore(MANY_AT_ONCE)

            async def one(path: str, start: int, end: int | None) -> Any:
                if end is not None and 0 <= start and end <= start:
                    return b""  # an empty range, which obstore refuses and fsspec answers
                async with gate:
                    try:
                        if start < 0 or (start == 0 and end is None):
                            options: Any = {"range": {"suffix": -start}} if start < 0 else None
                            result = await obstore.get_async(store, path, options=options)
                            return await result.bytes_async()
                        return await obstore.get_range_async(store, path, start=start, end=end)
                    except Exception as exc:
                        return _python_error(exc) if type(exc).__module__.startswith("obstore") else exc

            return list(await asyncio.gather(*(one(*item) for item in items)))

        return self._call(many, limit=limit)

    def get_range(self, rel: str, start: int, end: int | None, limit: float) -> Any:
        """Bytes ``[start, end)`` of ``rel`` (``start < 0``, ``end`` None: the last ``-start`` bytes), as a
        buffer (no copy)."""
        import obstore

        if start < 0:

            async def suffix(store: Any, path: str) -> Any:
                result = await obstore.get_async(store, path, options={"range": {"suffix": -start}})
                return await result.bytes_async()

            return self._call(suffix, rel, limit=limit)
        return self._call(obstore.get_range_async, rel, start=start, end=end, limit=limit)
