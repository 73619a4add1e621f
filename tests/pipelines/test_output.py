"""The output folder: one build at a time, all-or-nothing publishing, failed builds keep the old release, no
leftovers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest

import pipelines.engine.output as output
from chammi_data.format.manifest import read_manifest
from pipelines.engine.build import build
from pipelines.engine.output import OutputLock, OutputLocked, publish
from tests.pipelines.helpers import quiet_build

RELEASE = ["build_report.json", "manifest.csv", "manifest.parquet", "release.json", "shards", "zarr"]


def _build(raw: Path, out: Path, **kw):
    return quiet_build("wtc11", raw, out, per=16, **kw)


def test_a_held_lock_refuses_a_second_build_naming_the_holder(tmp_path: Path) -> None:
    out = tmp_path / "rel"
    with OutputLock(out):
        holder = json.loads((out / output.LOCK).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname() and holder["started"]
        with pytest.raises(OutputLocked) as err:
            build("wtc11", input_dir=tmp_path / "nowhere", output=out, progress=False, processes=False)
        message = str(err.value)
        assert f"pid {os.getpid()}" in message and f"host {socket.gethostname()}" in message
        assert "started" in message and str(out) in message
    assert not (out / output.LOCK).exists()  # released and removed


def test_a_lock_file_left_by_a_killed_build_does_not_block(tmp_path: Path) -> None:
    out = tmp_path / "rel"
    out.mkdir()
    (out / output.LOCK).write_text('{"host": "gone", "pid": 999999, "started": "yesterday"}\n')
    with OutputLock(out):  # no process holds the flock: the stale file is taken over
        assert json.loads((out / output.LOCK).read_text())["pid"] == os.getpid()
    assert not (out / output.LOCK).exists()


@pytest.mark.slow
def test_two_builds_started_together_into_one_output(wtc_raw: Path, tmp_path: Path) -> None:
    """Two real chammi-build processes at the same moment: one builds, the other fails at once (exit 2) naming
    the holder; the release is complete and the lock file is gone."""
    out = tmp_path / "rel"
    cmd = [
        sys.executable,
        "-m",
        "chammi_cli.build",
        "--source",
        "wtc11",
        "--input",
        str(wtc_raw),
        "--output",
        str(out),
        "--workers",
        "1",
        "--quiet",
    ]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    finished: list[subprocess.Popen] = []
    t0 = time.monotonic()
    while len(finished) < 2 and time.monotonic() - t0 < 300:
        finished += [p for p in procs if p not in finished and p.poll() is not None]
        time.sleep(0.01)
    first, second = finished
    assert (first.returncode, second.returncode) == (2, 0)  # the loser gives up while the winner still builds
    err = first.stderr.read()
    assert "is being built by another chammi-build" in err and f"pid {second.pid}" in err, err
    assert f"host {socket.gethostname()}" in err and "started" in err
    assert sorted(p.name for p in out.iterdir()) == RELEASE
    assert len(read_manifest(out)) == 42


def test_publish_never_shows_a_release_json_beside_other_parts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, staging = tmp_path / "rel", tmp_path / "rel" / output.STAGING
    for root, tag in ((out, "old"), (staging, "new")):
        (root / "shards").mkdir(parents=True)
        (root / "shards" / "a.tar").write_text(tag)
        (root / "zarr").mkdir()
        for name in ("manifest.parquet", "manifest.csv", "release.json"):
            (root / name).write_text(tag)
    (staging / "zarr" / f".shard.{uuid.uuid4().hex}.tmp").write_text("")  # left by a killed writer
    seen = []
    real_replace = os.replace

    def replace(src, dst):
        release = out / "release.json"
        parts = [(out / "shards" / "a.tar"), out / "manifest.parquet", out / "manifest.csv"]
        if release.exists():  # a reader that sees a release.json sees one whole release
            seen.append({release.read_text()} | {p.read_text() for p in parts if p.exists()})
        real_replace(src, dst)

    monkeypatch.setattr(output.os, "replace", replace)
    assert publish(staging, out) == out / "release.json"
    assert all(len(tags) == 1 for tags in seen)
    assert (out / "release.json").read_text() == "new" and (out / "shards" / "a.tar").read_text() == "new"
    assert not staging.exists() and not list(out.rglob("*.tmp"))


@pytest.mark.slow
def test_a_failed_build_keeps_the_previous_release(wtc_copy: Path, tmp_path: Path, hash_tree) -> None:
    out = tmp_path / "rel"
    assert _build(wtc_copy, out).ok
    before, report = hash_tree(out), (out / "build_report.json").read_bytes()
    table = pd.read_csv(wtc_copy / "metadata.csv")
    table.loc[3, "cell_stage"] = "M9"
    table.to_csv(wtc_copy / "metadata.csv", index=False)
    failed = _build(wtc_copy, out, strict=True)
    assert not failed.ok and failed.report_path == out / "build_report.failed.json"
    after = {k: v for k, v in hash_tree(out).items() if k != "build_report.failed.json"}
    assert after == before and (out / "build_report.json").read_bytes() == report
    rep = json.loads((out / "build_report.failed.json").read_text())
    assert rep["status"] == "failed" and "--strict" in rep["failure"] and rep["skipped"][0]["row"] == 3
    assert f"report: {out / 'build_report.failed.json'}" in failed.summary()
    assert not (out / output.STAGING).exists() and not (out / output.LOCK).exists()
    # the next successful build replaces the release and removes the failed report
    assert _build(wtc_copy, out).ok
    assert sorted(p.name for p in out.iterdir()) == RELEASE and len(read_manifest(out)) == 41


@pytest.mark.slow
def test_a_retried_shard_writer_leaves_no_temp_file(
    wtc_raw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker killed while writing a zarr shard leaves a temp file beside it; dask reruns the task elsewhere
    and the build succeeds - the release must not carry the temp file."""
    import chammi_data.format.zarr_store as zarr_store

    real = zarr_store.write_encoded_shard

    def killed_once_before(root, source, shard_index, chunks):
        folder = zarr_store.zarr_path(root, source) / "images"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f".c.{os.getpid()}-{uuid.uuid4().hex}.tmp").write_bytes(b"partial")
        return real(root, source, shard_index, chunks)

    monkeypatch.setattr(zarr_store, "write_encoded_shard", killed_once_before)
    assert _build(wtc_raw, tmp_path / "rel").ok
    assert not [p for p in (tmp_path / "rel").rglob("*") if p.name.endswith(".tmp")]
    assert sorted(p.name for p in (tmp_path / "rel").iterdir()) == RELEASE


@pytest.mark.slow
def test_a_store_without_conditional_writes_builds_and_says_its_lock_can_race(
    wtc_raw: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """fsspec's memory store has no conditional create: the lock is a check, a write and a read-back, with
    a warning naming the race; the release is published under its generation and reads back whole."""
    import fsspec

    import chammi_data

    url = f"memory://chammi-{uuid.uuid4().hex[:8]}/rel"
    with caplog.at_level("WARNING", logger="pipelines.engine.output_store"):
        result = _build(wtc_raw, url)
    assert result.ok and "cannot create objects conditionally" in caplog.text
    mem = fsspec.filesystem("memory")
    root = url.split("://", 1)[1]
    gen = json.loads(mem.cat_file(f"{root}/release.json"))["extra"]["generation"]
    assert mem.cat_file(f"{root}/release.json") == mem.cat_file(f"{root}/{gen}/release.json")
    assert not mem.exists(f"{root}/.chammi-build.lock") and len(chammi_data.load("all", root=url)) == 42


def test_the_committed_generation_is_kept_even_when_a_listing_misses_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The commit keeps the generation that was committed when the build started (its readers read on), the
    one named by the root release.json read by name: a listing that leaves out its release.json, or the root
    one, must not get it removed. Only older generations go."""
    import fsspec

    from pipelines.engine.output_store import StoreOutput

    url = f"memory://chammi-{uuid.uuid4().hex[:8]}/rel"
    root = url.split("://", 1)[1]
    mem = fsspec.filesystem("memory")
    old, prev, new = "g-" + "a" * 20, "g-" + "b" * 20, "g-" + "c" * 20
    release = json.dumps({"package": "chammi", "shards": {}, "extra": {"generation": prev}}).encode()
    for gen in (old, prev):
        mem.pipe_file(f"{root}/{gen}/release.json", release)
        mem.pipe_file(f"{root}/{gen}/shards/wtc11/wtc11-000000.tar", b"x")
    mem.pipe_file(f"{root}/release.json", release)
    out = StoreOutput(url)
    listed = out.store.list_files
    hidden = {"release.json", f"{prev}/release.json"}
    monkeypatch.setattr(out.store, "list_files", lambda p="": [f for f in listed(p) if f not in hidden])
    with caplog.at_level("WARNING", logger="pipelines.engine.output_store"):
        out.check_contents()
    assert out.previous == prev and f"{prev}, whose release.json is not listed" in caplog.text
    monkeypatch.setattr(out.store, "list_files", listed)
    mem.pipe_file(f"{root}/{new}/release.json", release)
    out._remove_old(keep={new, out.previous})
    assert {p.split(f"{root}/", 1)[1].split("/")[0] for p in mem.find(root)} == {prev, new, "release.json"}
