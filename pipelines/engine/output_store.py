"""The output of a build in an object store (``--output s3://bucket/prefix``, ``gs://...``): a lock object
with a lease, spills in the bucket, the release under a generation prefix, ``release.json`` as the commit.

The design beside the local one is described in :mod:`pipelines.engine.output`. Here:

**The lock** (:class:`LeaseLock`) is the object ``<prefix>/.chammi-build.lock``: ``{"host", "pid",
"started", "build", "expires", "lease_s"}``. It is created only if absent (``If-None-Match: *``); the build
rewrites it every ``lease_s / 4`` seconds with a later ``expires``, each time only if it is still the object
this build wrote (``If-Match`` its ETag). A second build finds the lock and exits 2 at once, naming the holder
and when its lease ends. **Takeover rule**: a lock whose ``expires`` has passed (its holder stopped renewing:
killed, or cut off from the store) is replaced with ``If-Match`` the ETag just read, so of two builds taking
over at once exactly one wins; the clocks of the machines involved must agree to within ``lease_s * 3/4``
(default lease 120 s: ``$CHAMMI_LOCK_LEASE_S``). A build whose renewal fails (another build took the lock)
stops before it publishes. Stores without conditional writes (see ``ObjectStore.conditional_writes``) get a
check-then-create and a read-back after a short wait; two builds starting within that window could both
proceed, and the build says so in a warning.

**Publishing** (:class:`StoreOutput`): shards and zarr chunks are written by the workers straight into
``<prefix>/g-<id>/``, where ``g-<id>`` is :func:`release_generation`, a digest of everything that decides the
release's bytes (the cells' records and encoded bytes' digests, the configuration, the library versions).
Then the small files (zarr metadata, manifests, the generation's ``release.json``) are uploaded, and
``<prefix>/release.json`` - the same bytes - is written last: the single commit point. Readers
(``chammi_data.store.storage``) find the generation through it. A reader of the old release never sees a mix:
it keeps reading the old generation, which is removed only after the commit of the one after it; a killed
build leaves the old release and its ``release.json`` untouched, and its uncommitted generation is removed by
the next successful build (unfinished multipart uploads under the prefix are aborted when a build starts).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from datetime import datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from chammi_data.format.release_format import canonical_json
from chammi_data.format.schema import SCHEMA_VERSION
from chammi_data.format.vocab import SOURCE_KEYS
from chammi_data.store.objects import ObjectStore
from pipelines.engine.output import FAILED_REPORT, LOCK, RELEASE_JSON, WORK, OutputLocked
from pipelines.engine.output_check import GENERATION, check_output
from pipelines.engine.spill import SPILL_VERSION
from pipelines.engine.writing import ReleaseSink

log = logging.getLogger(__name__)

#: Environment variable: seconds of a lock's lease (default 120); it is renewed every quarter of that.
LEASE_ENV = "CHAMMI_LOCK_LEASE_S"
#: seconds to wait before reading back a lock written without a conditional create
SETTLE_S = 2.0
#: libraries whose versions can change a release's bytes (part of the generation id)
LIBRARIES = ("zarr", "numcodecs", "pyarrow", "pandas", "zstandard", "numpy")


def release_generation(cells: list[dict[str, Any]], config: dict[str, Any], extra: dict[str, Any]) -> str:
    """``g-<20 hex>``: a digest of what decides every byte of a release - per cell (in release order) its
    ids, label, split, tasks, metadata, shape, pixel sha256 and the sha256 of its encoded bytes, plus the
    build configuration, the report extras and the versions of the writers. Equal ids mean equal bytes."""
    versions = {"schema": SCHEMA_VERSION, "spill": SPILL_VERSION}
    for name in ("chammi", *LIBRARIES):
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = ""
    h = hashlib.sha256(canonical_json({"versions": versions, "config": config, "extra": extra}).encode())
    order = {s: i for i, s in enumerate(SOURCE_KEYS)}
    for c in sorted(cells, key=lambda c: order.get(c["source"], len(order))):  # stable: release order
        fields = [c["cell_id"], c["source"], c["label"], c.get("split", ""), c.get("tasks", [])]
        fields += [c["meta"], c["groups"], c["shape"], c["dtype"], c["channels"]]
        fields += [c["sha256"], c.get("bytes_sha256", "")]
        h.update(canonical_json(fields).encode())
    return "g-" + h.hexdigest()[:20]


def lease_seconds() -> float:
    return max(1.0, float(os.environ.get(LEASE_ENV) or 120))


class LeaseLock:
    """The lock object of one build on ``store`` (see the module docstring)."""

    def __init__(self, store: ObjectStore, lease_s: float | None = None):
        self.store, self.lease_s = store, lease_s or lease_seconds()
        self.build = uuid.uuid4().hex
        self.started = datetime.now().astimezone().isoformat(timespec="seconds")
        self.etag = ""
        self.lost = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _text(self) -> bytes:
        holder = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": self.started,
            "build": self.build,
            "expires": time.time() + self.lease_s,
            "lease_s": self.lease_s,
        }
        return (json.dumps(holder) + "\n").encode()

    def _read(self) -> tuple[dict[str, Any] | None, str]:
        """(the lock's content or None when unreadable, its ETag); (None, "") when there is no lock."""
        info = self.store.info(LOCK)
        if info is None:
            return None, ""
        try:
            data = json.loads(self.store.read_object(LOCK))
            return (data if isinstance(data, dict) else None), info["etag"]
        except (ValueError, UnicodeDecodeError, FileNotFoundError):
            return None, info["etag"]

    def acquire(self) -> LeaseLock:
        """Take the lock, or raise :class:`~pipelines.engine.output.OutputLocked` naming its holder."""
        if not self.store.conditional_writes:
            log.warning(
                "%s cannot create objects conditionally: the build lock is a check, a write and a read-back "
                "after %.0f s; two builds started within that time could both run",
                self.store.url,
                SETTLE_S,
            )
        created = self.store.create(LOCK, self._text())
        if not self.store.conditional_writes and created:
            time.sleep(SETTLE_S)
        held, etag = self._read()
        if held is not None and held.get("build") == self.build:  # ours (also after a lost answer)
            self.etag = etag
        elif held is None or float(held.get("expires", 0)) < time.time():
            # takeover: the holder stopped renewing (or left an unreadable lock); only one contender wins
            if not etag or not self.store.replace(LOCK, self._text(), etag):
                raise self._locked(self._read()[0])
            log.warning("took over the build lock of %s left by %s", self.store.url, _holder(held))
            self.etag = self._read()[1]
        else:
            raise self._locked(held)
        self._thread = threading.Thread(target=self._renew_loop, name="chammi-lock-lease", daemon=True)
        self._thread.start()
        return self

    def _locked(self, held: dict[str, Any] | None) -> OutputLocked:
        until = ""
        if held and held.get("expires"):
            until = f"; its lease ends {datetime.fromtimestamp(float(held['expires'])).astimezone():%H:%M:%S}"
        return OutputLocked(
            f"{self.store.url} is being built by another chammi-build ({_holder(held)}{until}); wait for it "
            f"to finish or choose another --output (lock object {self.store.path(LOCK)})"
        )

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.lease_s / 4):
            self.renew()

    def renew(self) -> None:
        """Extend the lease, only if the lock is still this build's; else remember that it was lost."""
        if self.lost:
            return
        try:
            if self.store.replace(LOCK, self._text(), self.etag):
                self.etag = (self.store.info(LOCK) or {}).get("etag", "")
                return
            held, _ = self._read()
            self.lost = f"the build lock was taken over by {_holder(held)}"
        except Exception as exc:  # a store that is down now: try again at the next renewal
            log.warning("could not renew the build lock of %s: %s", self.store.url, exc)

    def check(self) -> None:
        """Raise when the lock was lost: the build must not publish."""
        if self.lost:
            raise OutputLocked(f"{self.store.url}: {self.lost}; this build stops without publishing")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if not self.lost:
            held, _ = self._read()
            if held is not None and held.get("build") == self.build:  # still ours: remove it
                self.store.delete([LOCK])


def _holder(held: dict[str, Any] | None) -> str:
    if not held:
        return "holder unknown: the lock object names none"
    return f"host {held.get('host')}, pid {held.get('pid')}, started {held.get('started')}"


class StoreOutput:
    """The output of a build in an object store (see the module docstring); the same interface as
    :class:`pipelines.engine.output.FolderOutput`."""

    is_local = False
    #: shards go under the generation prefix, named by the release's content: known once every unit is done
    needs_generation_first = True

    def __init__(self, location: str, storage_options: dict[str, Any] | None = None):
        self.store = ObjectStore(location, storage_options)
        self.store._writable()
        self.location: Path | str = self.store.url
        self.work = WORK
        self.lock = LeaseLock(self.store)
        self.previous = ""  # the generation committed when this build started
        self._mirror: Path | None = None

    def __enter__(self) -> StoreOutput:
        self.lock.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.lock.release()
        if self._mirror is not None:
            shutil.rmtree(self._mirror, ignore_errors=True)

    def check_contents(self) -> None:
        """Refuse (exit 2) a prefix holding anything but a chammi-build release and its working files; note
        the generation committed now."""
        files = self.store.list_files("")
        # asked for by name (one HEAD), not taken from the listing: what it names must be kept
        release = self.store.read_object(RELEASE_JSON) if self.store.exists(RELEASE_JSON) else None
        if release is not None and RELEASE_JSON not in files:
            files.append(RELEASE_JSON)
        check_output(self.store.url, files, release)
        if release is not None:
            # the committed generation is kept by this build's commit whatever the listing shows: readers that
            # opened it read on until the commit after (a listing that missed its release.json once cost it)
            self.previous = (json.loads(release).get("extra") or {}).get("generation", "")
            if self.previous and f"{self.previous}/{RELEASE_JSON}" not in files:
                log.warning(
                    "%s names generation %s, whose release.json is not listed under %s; it is kept",
                    self.store.path(RELEASE_JSON),
                    self.previous,
                    self.store.url,
                )

    def clear_leftovers(self) -> None:
        """Abort the multipart uploads a killed build left unfinished (they are invisible and billed)."""
        n = self.store.abort_uploads("")
        if n:
            log.warning("aborted %d unfinished upload(s) under %s", n, self.store.url)

    def sink(self, generation: str) -> ReleaseSink:
        """The generation's prefix (workers write the shards there) and a client temp folder for the small
        files."""
        if not generation:
            raise ValueError("an object-store output needs the release's generation before it writes shards")
        self._mirror = Path(tempfile.mkdtemp(prefix="chammi-release-"))
        return ReleaseSink(self.store.child(generation), self._mirror)

    def publish(self, sink: ReleaseSink) -> str:
        """Upload the small files into the generation (its release.json last), commit by writing the root
        release.json, then remove the generations before the previous one. Returns the root release.json."""
        small = sorted(
            p.relative_to(sink.mirror).as_posix()
            for p in sink.mirror.rglob("*")
            if p.is_file() and p.name != RELEASE_JSON and not p.name.endswith(".tmp")
        )
        sink.upload(small)
        sink.upload([RELEASE_JSON])
        self.lock.check()
        self.store.put(RELEASE_JSON, (sink.mirror / RELEASE_JSON).read_bytes())  # the commit
        new = sink.store.url.rstrip("/").rsplit("/", 1)[-1]
        self._remove_old(keep={new, self.previous})
        return self.store.path(RELEASE_JSON)

    def _remove_old(self, keep: set[str]) -> None:
        import re

        files = self.store.list_files("")
        old = sorted({f.split("/", 1)[0] for f in files if re.match(GENERATION + "/", f)} - keep)
        for gen in old:
            self.store.delete_prefix(gen)
        if self.previous:  # a flat release (copied into the bucket) is older than any generation
            from pipelines.engine.output_check import RELEASE_PATTERNS

            flat = [f for f in files if "/" not in f.split("/", 1)[0] or f.startswith(("shards/", "zarr/"))]
            stale = [
                f for f in flat if f != RELEASE_JSON and any(re.fullmatch(p, f) for p in RELEASE_PATTERNS)
            ]
            self.store.delete(stale)

    def finish(self, ok: bool, keep_work: bool) -> None:
        if ok:
            self.store.delete([FAILED_REPORT])
            if not keep_work:
                self.store.delete_prefix(WORK)

    def write_report(self, name: str, data: bytes) -> str:
        self.store.put(name, data)
        return self.store.path(name)

    def free_bytes(self) -> int | None:
        return None

    def check_workers(self, client: Any) -> None:
        """Workers write straight into the store: nothing of the client's needs to be visible to them."""


def open_output(location: Any, storage_options: dict[str, Any] | None = None) -> Any:
    """The output of a build at ``location``: a :class:`~pipelines.engine.output.FolderOutput` for a path or
    ``file://``, a :class:`StoreOutput` for an object-store URL. A location that cannot hold a build's output
    (``http(s)://``, a scheme fsspec does not know or whose backend is not installed) is refused before
    anything is written."""
    from chammi_data.errors import UserError
    from chammi_data.store.paths import protocol_of, strip_file_scheme
    from pipelines.engine.output import FolderOutput

    text = os.fspath(location)
    proto = protocol_of(text)
    if proto in ("", "file"):
        return FolderOutput(strip_file_scheme(text))
    if proto in ("http", "https"):
        raise UserError(
            f"--output {text}: an HTTP server is read-only; write the release to a folder or an object store "
            "(s3://, gs://, ...) and serve that"
        )
    import fsspec

    try:
        fsspec.get_filesystem_class(proto)
    except ValueError:
        raise UserError(
            f"--output {text}: unknown storage scheme {proto}:// (fsspec has no such protocol)"
        ) from None
    except ImportError as exc:
        extra = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}.get(proto)
        hint = f" (pip install 'chammi[{extra}]')" if extra else ""
        raise UserError(f"--output {text}: the {proto}:// backend is not installed{hint}: {exc}") from None
    return StoreOutput(text, storage_options)
