"""The output folder of a build: one build at a time, a staging folder, an all-or-nothing swap, no leftovers.

``OUTPUT/`` holds a release (``release.json``, ``manifest.parquet``, ``manifest.csv``, ``shards/``, ``zarr/``)
and the report of the build that made it (``build_report.json``). During a build it also holds:

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
a killed process are removed at the start and at the end of every build.
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
