"""What an output location may hold before a build writes into it: nothing, or what ``chammi-build`` wrote.

A build replaces the release in its output (and removes its own leftovers), so it must never meet a file it
did not write: a user's ``shards/mydata.bin`` would be deleted with the old shards, a ``manifest.csv`` of
theirs overwritten. Before it writes anything, a build therefore checks every file of the output (folder or
bucket prefix) against the names ``chammi-build`` writes (:data:`RELEASE_PATTERNS`):

- the release: ``release.json``, ``manifest.parquet``, ``manifest.csv``,
  ``shards/<source>/<source>-NNNNNN.tar``, ``zarr/<source>.zarr/`` (``zarr.json`` files and shard files
  ``images/c/<k>/0/0/0``), the reports ``build_report.json`` / ``build_report.failed.json``;
- its own working files: ``.chammi-build.lock``, anything under ``.work/`` (unit spills, generated sample
  data) and ``.staging/``, temp files ``.<name>.<id>.tmp``, and on an object store the generation folders
  ``g-<hex>/`` holding a release.

Any other file refuses the build (exit 2) with a message naming what is there. Release files without a
``release.json`` made by ``chammi-build`` and without any of its working files (a folder of someone else's
``manifest.csv``) are refused too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

from chammi_data.errors import UserError
from chammi_data.format.vocab import SOURCE_KEYS
from chammi_data.store.generation import GENERATION_RE

_SRC = "|".join(re.escape(s) for s in SOURCE_KEYS)
#: a release's files, relative to its root
RELEASE_PATTERNS = (
    r"release\.json",
    r"manifest\.parquet",
    r"manifest\.csv",
    r"shards/(?:" + "|".join(rf"{re.escape(s)}/{re.escape(s)}" for s in SOURCE_KEYS) + r")-\d{6}\.tar",
    rf"zarr/({_SRC})\.zarr/zarr\.json",
    rf"zarr/({_SRC})\.zarr/images/zarr\.json",
    rf"zarr/({_SRC})\.zarr/images/c/\d+/0/0/0",
)
#: what a build leaves beside a release
BUILD_FILES = (r"build_report\.json", r"build_report\.failed\.json", r"\.chammi-build\.lock")
#: working folders of a build (anything under them is its own)
WORK_PREFIXES = (".work/", ".staging/")
#: a generation folder of an object-store output
GENERATION = GENERATION_RE.pattern
_RELEASE = re.compile("|".join(f"(?:{p})" for p in RELEASE_PATTERNS))
_OURS = re.compile(
    "|".join(f"(?:{p})" for p in (*RELEASE_PATTERNS, *BUILD_FILES))
    + rf"|(?:{GENERATION}/(?:{'|'.join(RELEASE_PATTERNS)}))"
    + r"|(?:(?:.*/)?\.[^/]+\.tmp)"
)


def foreign_files(files: Iterable[str]) -> list[str]:
    """The paths (relative, ``/``-separated) among ``files`` that ``chammi-build`` does not write."""
    return sorted(f for f in files if not f.startswith(WORK_PREFIXES) and not _OURS.fullmatch(f))


def made_by_chammi_build(release_json: bytes | None) -> bool:
    """True for the bytes of a ``release.json`` that ``chammi-build`` (or the chammi writer) wrote."""
    if release_json is None:
        return False
    try:
        data = json.loads(release_json)
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and data.get("package") == "chammi" and "shards" in data


def check_output(where: str, files: list[str], release_json: bytes | None) -> None:
    """Raise :class:`UserError` (exit 2) when the output ``where`` holds anything a build must not touch:
    files ``chammi-build`` does not write, or release files without a ``chammi-build`` release.json or its
    working files (``files``: every file there, relative; ``release_json``: the root release.json or None)."""
    foreign = foreign_files(files)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise UserError(
            f"--output {where} holds files chammi-build did not write ({shown}); a build writes only into an "
            "empty folder or one holding a chammi-build release, and never deletes other files: choose "
            "another --output or move them away"
        )
    # the lock is this build's own by now: it says nothing about what was there before
    ours = made_by_chammi_build(release_json) or any(
        f.startswith(WORK_PREFIXES) or re.match(GENERATION + "/", f) for f in files
    )
    release = [f for f in files if _RELEASE.fullmatch(f) or f.startswith(("build_report",))]
    if release and not ours:
        shown = ", ".join(release[:5]) + (f" and {len(release) - 5} more" if len(release) > 5 else "")
        what = (
            "a release.json that chammi-build did not write"
            if release_json is not None
            else "no release.json"
        )
        raise UserError(
            f"--output {where} holds {shown} but {what}: it is not a release made by chammi-build, and a "
            "build would overwrite those files; choose another --output or move them away"
        )
