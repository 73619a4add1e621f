"""The output of a build: one build at a time, the release assembled apart, published all at once, no
leftovers. Two designs with one interface (:func:`open_output`): a local folder (this module,
:class:`FolderOutput`) and an object store (``s3://...``, ``gs://...``: :mod:`pipelines.engine.output_store`).

Before anything is written, both check what the output holds (:mod:`pipelines.engine.output_check`): an
empty location or a chammi-build release, else the build is refused naming what is there, so a build never
deletes or overwrites a file it did not write.

**A local folder.** ``OUTPUT/`` holds a release (``release.json``, ``manifest.parquet``, ``manifest.csv``,
``shards/``, ``zarr/``) and the report of the build that made it (``build_report.json``). During a build it
also holds:

- ``.chammi-build.lock``: an exclusive ``fcntl.flock`` held for the whole build, its text naming the holder
  (host, pid, start time). A second build into the same folder fails at once (:class:`OutputLocked`). The
  kernel drops the lock when its process dies, so a file left by a killed build does not block the next one;
  a finished build removes it.
- ``.work/``: unit spills (resume after a kill) and the generated sample raw data; removed after a successful
  build unless ``--keep-work``.
- ``.staging/``: the new release's shards, zarr stores, manifests and release.json. Only a successful build
  moves them into ``OUTPUT/`` (:func:`publish`): ``release.json`` is removed first, so a reader sees either
  the old release, no release (readers fail loudly: no release.json), or the new one - never a mix.

A failed build (``--strict`` with skipped items, no cells, accounting that does not add up) leaves the
previous release and its ``build_report.json`` untouched and writes ``OUTPUT/build_report.failed.json``
(:data:`FAILED_REPORT`); a later successful build removes that file. Temp files (``.<name>.<id>.tmp``) left by
a killed process are removed at the start and at the end of every build. With ``--scheduler`` the workers
must see this folder (a shared filesystem); the build checks that they do and otherwise asks for an
object-store output.

**An object store** cannot lock a file, rename or swap a folder. There (:mod:`pipelines.engine.output_store`):

- the lock is an object, ``.chammi-build.lock``, created only if absent (``If-None-Match: *``) and holding
  a lease that the build renews; a build whose lease expired (its holder died) is taken over with a
  conditional replace (``If-Match``), so of two builds taking over at once one wins. Stores without
  conditional writes get a check-then-write with a read-back, and the race it leaves is named in a warning;
- unit spills live under ``.work/`` in the bucket (a rerun after a kill of the client reuses them);
- the release is written under a generation prefix ``g-<content id>/`` (the id is a digest of everything
  that decides the release's bytes, so a rebuild of the same content writes the same objects), then
  ``release.json`` at the root - the same bytes as the generation's own - is written last: it is the single
  commit point, and readers find the generation through it. Old generations are removed only after the
  commit, and the one committed before this build is kept so that a reader that opened it can finish; a
  killed build leaves the old release readable and its own objects are removed by the next build.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from chammi_data.errors import UserError
from chammi_data.store.objects import ObjectStore
from pipelines.engine.cluster import blind_workers
from pipelines.engine.output_check import check_output
from pipelines.engine.writing import ReleaseSink

LOCK = ".chammi-build.lock"
STAGING = ".staging"
WORK = ".work"
REPORT = "build_report.json"
FAILED_REPORT = "build_report.failed.json"
#: the parts of a release moved from the staging folder into OUTPUT; release.json goes last
RELEASE_PARTS = ("shards", "zarr", "manifest.parquet", "manifest.csv")
RELEASE_JSON = "release.json"


class OutputLocked(UserError):
    """Another build holds the output folder; the message names the holder (host, pid, start time)."""


class OutputLock:
    """``with OutputLock(out):`` - the exclusive lock on ``out`` (created when missing) for one build."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.path = self.out / LOCK
        self.fd: int | None = None

    def __enter__(self) -> OutputLock:
        if self.out.exists() and not self.out.is_dir():
            raise UserError(f"--output {self.out} is a file, not a folder: name a folder for the release")
        while True:
            self.out.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:  # the folder was removed between mkdir and open: try again
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise OutputLocked(
                    f"{self.out} is being built by another chammi-build ({self._holder()}); wait "
                    f"for it to finish or choose another --output (lock file {self.path})"
                ) from None
            try:  # the holder before us may have removed the file after we opened it: lock the file now there
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        holder = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        self.fd = fd
        return self

    def _holder(self) -> str:
        """ "host H, pid P, started T" from the lock file (its holder may be writing it: a short wait)."""
        for _ in range(20):
            try:
                info: dict[str, Any] = json.loads(self.path.read_text(encoding="utf-8"))
                return f"host {info['host']}, pid {info['pid']}, started {info['started']}"
            except (OSError, ValueError, KeyError, TypeError):
                time.sleep(0.05)
        return "holder unknown: the lock file names none"

    def __exit__(self, *exc: object) -> None:
        if self.fd is None:
            return
        try:
            # removed while still locked: a waiting build re-checks the inode
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)  # releases the lock
            self.fd = None


def remove_tmp_files(folder: Path, recursive: bool = True) -> int:
    """Remove temp files (``.<name>.<id>.tmp``) that atomic writes of a killed process left in ``folder``."""
    if not folder.is_dir():
        return 0
    found = folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp")
    n = 0
    for p in list(found):
        if p.is_file() or p.is_symlink():
            p.unlink(missing_ok=True)
            n += 1
    return n


def clear_leftovers(out: Path) -> None:
    """Before a build: remove the staging folder of an earlier (killed or failed) build and temp files in
    ``out`` itself. The release in ``out`` and the work folder (spills to resume from) stay."""
    shutil.rmtree(out / STAGING, ignore_errors=True)
    remove_tmp_files(out, recursive=False)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def publish(staging: Path, out: Path) -> Path:
    """Move the release built in ``staging`` into ``out``, replacing the release there; returns release.json.

    ``out/release.json`` is removed first and the new one moved in last, so at no moment does a release.json
    stand beside parts of another release. Temp files left in the staging folder are removed first.
    """
    remove_tmp_files(staging)
    replaced = staging / ".replaced"
    (out / RELEASE_JSON).unlink(missing_ok=True)
    for part in RELEASE_PARTS:
        target = out / part
        if target.exists() or target.is_symlink():
            replaced.mkdir(exist_ok=True)
            os.replace(target, replaced / part)
        if (staging / part).exists():
            os.replace(staging / part, target)
    os.replace(staging / RELEASE_JSON, out / RELEASE_JSON)
    _remove(staging)
    return out / RELEASE_JSON


def finish_output(out: Path, ok: bool, keep_work: bool) -> None:
    """After a build: the staging folder goes; after a success also the failed report of an earlier build and,
    unless ``keep_work``, the work folder (else the temp files in it)."""
    _remove(out / STAGING)
    if ok:
        (out / FAILED_REPORT).unlink(missing_ok=True)
        if keep_work:
            remove_tmp_files(out / WORK)
        else:
            _remove(out / WORK)
    remove_tmp_files(out, recursive=False)


def local_files(out: Path) -> list[str]:
    """Every file under ``out`` (relative, ``/``-separated); a build's working folders count as one entry
    each (``.work/``), their content is not walked."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(out):
        rel = Path(dirpath).relative_to(out).as_posix()
        if rel == ".":
            for work in (WORK, STAGING):
                if work in dirnames:
                    dirnames.remove(work)
                    found.append(f"{work}/")
            rel = ""
        found += [f"{rel}/{f}".lstrip("/") for f in filenames]
    return sorted(found)


class FolderOutput:
    """The output of a build in a local folder (see the module docstring); the interface the engine uses
    for both kinds of output."""

    is_local = True
    #: a folder's release is assembled where it ends up: shards can be written before every source is done
    needs_generation_first = False

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser().absolute()
        self.location: Path | str = self.path
        self.store = ObjectStore(self.path)
        self.work = WORK
        self._lock = OutputLock(self.path)

    def __enter__(self) -> FolderOutput:
        self._lock.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.__exit__(*exc)

    def check_contents(self) -> None:
        """Refuse (exit 2) a folder holding anything but a chammi-build release and its working files."""
        release = self.path / RELEASE_JSON
        check_output(
            str(self.path), local_files(self.path), release.read_bytes() if release.is_file() else None
        )

    def clear_leftovers(self) -> None:
        clear_leftovers(self.path)

    def sink(self, generation: str = "") -> ReleaseSink:
        """The staging folder, where the workers write the shards and the client the small files."""
        staging = self.path / STAGING
        staging.mkdir(parents=True, exist_ok=True)
        return ReleaseSink(ObjectStore(staging), staging)

    def publish(self, sink: ReleaseSink) -> Path:
        return publish(sink.mirror, self.path)

    def finish(self, ok: bool, keep_work: bool) -> None:
        finish_output(self.path, ok, keep_work)

    def write_report(self, name: str, data: bytes) -> Path:
        self.store.put(name, data)
        return self.path / name

    def free_bytes(self) -> int | None:
        """Free space on the folder's filesystem."""
        return shutil.disk_usage(self.path).free

    def check_workers(self, client: Any) -> None:
        """Refuse a cluster whose workers cannot see this folder (no shared filesystem): they would write
        into folders of their own. A marker file is written here and looked for on every worker."""
        marker = self.path / WORK / f".visible-{os.getpid()}-{int(time.time() * 1e6)}"
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("chammi-build\n", encoding="utf-8")
        try:
            blind = blind_workers(client, os.path.isfile, str(marker))
        finally:
            marker.unlink(missing_ok=True)
        if blind:
            raise UserError(
                f"the dask workers {', '.join(blind[:3])} cannot see --output {self.path} (no shared "
                "filesystem): write the release to an object store (--output s3://bucket/prefix) or use a "
                "folder every worker mounts"
            )
