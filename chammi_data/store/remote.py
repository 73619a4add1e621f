"""Remote requests with a deadline: how long a read may take, how it is retried, and how it fails.

Every remote request of a :class:`~chammi_data.store.storage.ReleaseStore` goes through
:func:`call_with_retries`, in the main process, in read-ahead threads and in DataLoader workers alike:

- **timeout** (``RetryPolicy.timeout``, ``$CHAMMI_REMOTE_TIMEOUT_S``, default 15 s): how long one request may
  wait for the server without receiving anything: connecting, waiting for the answer, between reads of the
  body. It is given to the storage client (aiohttp ``sock_connect``/``sock_read``, botocore
  ``connect_timeout``/``read_timeout``), so a stalled connection is noticed and retried.
- **deadline** (``RetryPolicy.deadline``, ``$CHAMMI_REMOTE_DEADLINE_S``, default 60 s): the most a read may
  take in all, its attempts and the waits between them included; a read of ``n`` known bytes gets
  ``n / min_rate`` seconds more (1 MiB/s by default), so large transfers are not cut short. Each attempt is
  cancelled when the deadline passes whatever the client does, so a stalled, trickling or half-dead server
  becomes ONE :class:`RemoteReadError` that names the URL, the byte range, the attempts and the seconds
  spent, never a hang.
- **retries**: timeouts, connection resets and 5xx answers are retried with exponential backoff
  (``attempts``, ``backoff``, ``max_backoff``) while the deadline allows. The clients' own retry loops (s3fs
  ``retries``, botocore ``retries`` unless ``config_kwargs`` set it) make one attempt per call: nested
  retry loops multiply (5 x 5 x 5 attempts of 60 s each made a stalled S3 server look like a hang).
  Missing or refused objects (403/404) and missing credentials are not retried: they raise
  :class:`RemoteObjectError` at once, naming the object and the credentials source (never a secret).
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

log = logging.getLogger("chammi_data.store.storage")
T = TypeVar("T")

#: Seconds one request may wait for the server without receiving anything (connect, answer, body reads).
TIMEOUT_ENV = "CHAMMI_REMOTE_TIMEOUT_S"
#: Seconds one read may take in all, retries and waits included (plus ``n / min_rate`` for n known bytes).
DEADLINE_ENV = "CHAMMI_REMOTE_DEADLINE_S"
DEFAULT_TIMEOUT_S = 15.0
DEFAULT_DEADLINE_S = 60.0


def env_seconds(name: str, default: float) -> float:
    """A positive number of seconds from the environment variable ``name`` (``default`` when unset)."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"${name}={text!r} is not a number of seconds") from None
    if not value > 0 or not math.isfinite(value):
        raise ValueError(f"${name}={text!r}: give a positive number of seconds")
    return value


class RemoteObjectError(FileNotFoundError):
    """A remote object is missing (``missing``) or access to it was refused (not retried); names the object
    and the credentials source."""

    def __init__(self, message: str, missing: bool = False) -> None:
        super().__init__(message)
        self.missing = missing


class RemoteReadError(OSError):
    """A remote read failed after every retry or passed its deadline; names the URL, what was read (the byte
    range, the shard), the attempt count and the seconds spent."""


@dataclass(frozen=True)
class RetryPolicy:
    """How remote reads are timed and retried (see the module docstring).

    ``attempts`` in all, sleeping ``backoff * 2**k`` (at most ``max_backoff``) seconds between them;
    ``timeout``: seconds one request may wait without receiving anything; ``deadline``: seconds one read may
    take in all, plus ``nbytes / min_rate`` (``min_rate`` in bytes/s) for a read of known size. ``timeout``
    and ``deadline`` default to ``$CHAMMI_REMOTE_TIMEOUT_S`` / ``$CHAMMI_REMOTE_DEADLINE_S`` (15 s / 60 s).
    """

    attempts: int = 5
    backoff: float = 0.2
    max_backoff: float = 5.0
    timeout: float = field(default_factory=lambda: env_seconds(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
    deadline: float = field(default_factory=lambda: env_seconds(DEADLINE_ENV, DEFAULT_DEADLINE_S))
    min_rate: float = float(1 << 20)

    def budget(self, nbytes: int | None = None) -> float:
        """Seconds a read of ``nbytes`` (None: unknown) may take in all."""
        return self.deadline + (max(0, nbytes) / self.min_rate if nbytes else 0.0)


def client_options(protocol: str, storage_options: Mapping[str, Any], policy: RetryPolicy) -> dict[str, Any]:
    """``storage_options`` plus what makes a client's requests bounded: per-request timeouts and a single
    attempt per request (this module retries), each only where the user gave none."""
    opts = dict(storage_options)
    t = policy.timeout
    if protocol in ("http", "https"):
        import aiohttp

        ck = dict(opts.get("client_kwargs") or {})
        ck.setdefault("timeout", aiohttp.ClientTimeout(total=None, sock_connect=t, sock_read=t))
        opts["client_kwargs"] = ck
    elif protocol in ("s3", "s3a"):
        cfg = dict(opts.get("config_kwargs") or {})
        cfg.setdefault("connect_timeout", t)
        cfg.setdefault("read_timeout", t)
        cfg.setdefault("retries", {"total_max_attempts": 1})
        opts["config_kwargs"] = cfg
    # other protocols (gs://, ...): their clients' own timeouts, and the deadline of call_fs
    return opts


def limit_client_retries(fs: Any) -> Any:
    """One attempt per call in s3fs's own retry loop (a class attribute, not an option): this module
    retries, and nested loops multiply the time a dead server takes to report."""
    if "s3" in (fs.protocol if isinstance(fs.protocol, tuple | list) else (fs.protocol,)):
        fs.retries = 1
    return fs


def call_fs(fs: Any, method: str, *args: Any, limit: float | None = None, **kwargs: Any) -> Any:
    """``fs.<method>(*args, **kwargs)``, cancelled after ``limit`` seconds for an async filesystem (its
    coroutine ``_<method>`` runs on fsspec's loop under ``asyncio.wait_for``). A synchronous filesystem
    cannot be cancelled from outside: its own timeouts apply."""
    if getattr(fs, "async_impl", False) and inspect.iscoroutinefunction(getattr(fs, f"_{method}", None)):
        from fsspec.asyn import sync

        return sync(fs.loop, getattr(fs, f"_{method}"), *args, timeout=max(limit or 0.0, 1e-3), **kwargs)
    return getattr(fs, method)(*args, **kwargs)


# -- classifying failures ------------------------------------------------------------------------------------
def http_status(exc: BaseException) -> int | None:
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
#: Exception class names that mean "the server did not answer in time".
TIMEOUTS = ("ReadTimeoutError", "ConnectTimeoutError", "ServerTimeoutError", "SocketTimeoutError")


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and len(out) < 5:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


def no_credentials(exc: BaseException) -> bool:
    """True when ``exc`` (or what it was raised from) says that no usable credentials were found."""
    return any(type(e).__name__ in NO_CREDENTIALS for e in _chain(exc))


def timed_out(exc: BaseException) -> bool:
    """True when ``exc`` (or what it was raised from) is a timeout of the request."""
    return any(isinstance(e, TimeoutError) or type(e).__name__ in TIMEOUTS for e in _chain(exc))


#: Exception class names of the clients' connection failures (aiohttp, botocore).
CONNECTION_ERRORS = (
    "ClientConnectorError",
    "ClientConnectionError",
    "ClientOSError",
    "ServerDisconnectedError",
    "ClientPayloadError",
    "EndpointConnectionError",
    "ConnectionClosedError",
)


def connection_failed(exc: BaseException) -> bool:
    """True when ``exc`` (or what it was raised from) is a failed connection or a timeout."""
    return timed_out(exc) or any(
        isinstance(e, ConnectionError) or type(e).__name__ in CONNECTION_ERRORS for e in _chain(exc)
    )


def refused(exc: BaseException) -> bool:
    """Errors that another attempt cannot fix: missing objects, refused access, no credentials. fsspec's HTTP
    filesystem reports ANY failure of a file's info as ``FileNotFoundError``: one raised from a failed
    connection is a dead server, not a missing file, and is retried."""
    if isinstance(exc, FileNotFoundError) and connection_failed(exc):
        return False
    if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError | NotADirectoryError):
        return True
    if no_credentials(exc):
        return True
    status = http_status(exc)
    return status is not None and 400 <= status < 500 and status not in (408, 429)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def call_with_retries(
    policy: RetryPolicy,
    url: str,
    what: str,
    attempt: Callable[[float], T],
    credentials: Callable[[], str],
    nbytes: int | None = None,
) -> T:
    """``attempt(seconds_left)`` until it succeeds, retried as ``policy`` says within its deadline for a
    read of ``nbytes``; ``url`` and ``what`` (e.g. ``read bytes 0..99``) name the read in errors."""
    budget = policy.budget(nbytes)
    start = time.monotonic()
    n = 0
    while True:
        n += 1
        try:
            return attempt(budget - (time.monotonic() - start))
        except Exception as exc:
            if refused(exc):
                status = http_status(exc)
                if no_credentials(exc):
                    raise RemoteObjectError(
                        f"{url}: {what}: no credentials found ({type(exc).__name__}); credentials: "
                        f"{credentials()}; for a public bucket pass storage_options={{'anon': True}}"
                    ) from exc
                kind = "not found" if isinstance(exc, FileNotFoundError) or status == 404 else "refused"
                code = f" (HTTP {status})" if status else ""
                raise RemoteObjectError(
                    f"{url}: {what}: object {kind}{code}; credentials: {credentials()}",
                    missing=kind == "not found",
                ) from exc
            elapsed = time.monotonic() - start
            delay = min(policy.max_backoff, policy.backoff * 2 ** (n - 1))
            if n >= policy.attempts or elapsed + delay >= budget:
                if timed_out(exc):
                    reason = (
                        f"the server did not answer (timeout {policy.timeout:g} s per request, deadline "
                        f"{budget:.0f} s; ${TIMEOUT_ENV} and ${DEADLINE_ENV} change them; last error: "
                        f"{_describe(exc)})"
                    )
                else:
                    reason = _describe(exc)
                raise RemoteReadError(
                    f"{url}: {what} failed after {n} attempts in {elapsed:.1f} s: {reason}"
                ) from exc
            log.info(
                "%s: %s failed (attempt %d of %d: %s); retrying in %.1f s",
                url,
                what,
                n,
                policy.attempts,
                _describe(exc),
                delay,
            )
            time.sleep(delay)
