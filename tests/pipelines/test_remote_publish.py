"""Releases published into a bucket, attacked: the client SIGKILLed mid-build (the lease then the takeover,
units reused, the same bytes), a second build into the same prefix, and readers running while rebuilds
publish (never a mix; the previous generation readable until the next commit; a killed build changes
nothing a reader sees)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import chammi_data
from chammi_data.format.manifest import read_release_json
from chammi_data.store.storage import ReleaseStore
from tests.pipelines.remote import bucket_release, chammi_build, local_release, make_public, s3fs_of
from tests.servers import S3Server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def s3(raw_tree: Path):
    with S3Server() as server:
        server.upload(raw_tree / "wtc11", "raw", "wtc11")
        s3fs_of(server).mkdir("out")
        make_public(server, "raw")
        yield server


@pytest.fixture
def s3_env(s3, monkeypatch):
    for k, v in s3.env().items():
        monkeypatch.setenv(k, v)
    return s3


def _config(tmp_path: Path, per: int) -> Path:
    cfg = tmp_path / f"per{per}.yaml"
    cfg.write_text(f"cells_per_shard: {per}\n")
    return cfg


def _args(out: str, cfg: Path) -> list[str]:
    return ["--source", "wtc11", "--input", "s3://raw/wtc11", "--anon", "--output", out, "--config", str(cfg)]


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "chammi_cli.build", *args, "--quiet"],
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )


def _wait(cond, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else proc.returncode
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_sigkill_of_the_client_then_the_lease_then_a_resumed_build_with_the_same_bytes(
    s3, raw_tree: Path, tmp_path: Path
) -> None:
    cfg = _config(tmp_path, 8)
    # a lease long enough for the refused build to start and look on a slow machine (4 s was not, once)
    env = {**s3.env(), "CHAMMI_LOCK_LEASE_S": "12"}
    fs = s3fs_of(s3)
    units = "out/killed/.work/wtc11/units"
    proc = _start([*_args("s3://out/killed", cfg), "--workers", "2"], env)
    _wait(lambda: len(fs.find(units)) >= 8, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    done = len(fs.find(units))
    assert not fs.exists("out/killed/release.json")
    expires = float(json.loads(fs.cat_file("out/killed/.chammi-build.lock"))["expires"])
    # at once: the dead build's lease has not run out - refused, naming the holder and when it ends
    refused = chammi_build(*_args("s3://out/killed", cfg), "--quiet", env=env)
    assert refused.returncode == 2, refused.stderr
    assert f"pid {proc.pid}" in refused.stderr and "its lease ends" in refused.stderr
    assert "is being built by another chammi-build" in refused.stderr
    time.sleep(max(0.0, expires - time.time()) + 0.5)  # the lease runs out: the next build takes over
    rerun = chammi_build(*_args("s3://out/killed", cfg), "--quiet", env=env)
    assert rerun.returncode == 0, rerun.stderr
    report = json.loads(fs.cat_file("out/killed/build_report.json"))
    assert done <= report["accounting"]["wtc11"]["units_reused"] < 42
    local = tmp_path / "local"
    assert chammi_build("--source", "wtc11", "--input", str(raw_tree / "wtc11"), "--output", str(local),
                        "--config", str(cfg), "--quiet").returncode == 0  # fmt: skip
    assert bucket_release(fs, "s3://out/killed")[0] == local_release(local)
    assert not fs.exists("out/killed/.chammi-build.lock") and not fs.exists("out/killed/.work")


def test_a_second_build_into_the_same_prefix_exits_2_at_once(s3, tmp_path: Path) -> None:
    cfg = _config(tmp_path, 8)
    fs = s3fs_of(s3)
    first = _start(_args("s3://out/twice", cfg), s3.env())
    _wait(lambda: fs.exists("out/twice/.chammi-build.lock"), first)
    t0 = time.monotonic()
    second = chammi_build(*_args("s3://out/twice", cfg), "--quiet", env=s3.env())
    assert second.returncode == 2 and time.monotonic() - t0 < 30, second.stderr
    assert "is being built by another chammi-build" in second.stderr and f"pid {first.pid}" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
    assert first.wait(300) == 0, first.stderr.read()


def _observe(url: str, seen: list, errors: list, stop: threading.Event) -> None:
    """A reader opening the release again and again: the manifest (checked against release.json), three
    cells with their pixel checksums, and which generation and shards it read."""
    while not stop.is_set():
        try:
            store = ReleaseStore(url)
            ds = chammi_data.load("all", root=store, verify=True)
            for i in (0, len(ds) // 2, len(ds) - 1):
                assert ds[i]["image"].shape[0] == 3
            shards = tuple(sorted(set(ds.rows["shard"])))
            seen.append((store.generation_prefix(), shards, read_release_json(store)["extra"]["generation"]))
        except Exception as exc:  # anything at all is a finding
            errors.append(repr(exc))


def test_readers_never_see_a_mix_while_rebuilds_publish_and_a_killed_build_changes_nothing(
    s3_env, tmp_path: Path
) -> None:
    url, fs = "s3://out/pub", s3fs_of(s3_env)
    assert chammi_build(*_args(url, _config(tmp_path, 8)), "--quiet").returncode == 0
    v1 = read_release_json(url)["extra"]["generation"]
    opened = chammi_data.load("all", root=url)  # a reader that opened v1 and reads on after the commit
    seen: list = []
    errors: list = []
    stop = threading.Event()
    reader = threading.Thread(target=_observe, args=(url, seen, errors, stop))
    reader.start()
    try:
        assert chammi_build(*_args(url, _config(tmp_path, 16)), "--quiet").returncode == 0
        v2 = read_release_json(url)["extra"]["generation"]
        # until the reader has read the new one (a fixed second was too short on a loaded CI machine: one
        # reading that began before the commit outlasted it)
        deadline = time.monotonic() + 120
        while not any(named == v2 for _, _, named in seen) and not errors and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        reader.join(60)
    assert v1 != v2 and not errors, errors[:3]
    shards = {v1: tuple(f"shards/wtc11/wtc11-{k:06d}.tar" for k in range(6)),
              v2: tuple(f"shards/wtc11/wtc11-{k:06d}.tar" for k in range(3))}  # fmt: skip
    assert {g for g, _, _ in seen} == {f"{v1}/", f"{v2}/"}  # both were read while the new one published
    for prefix, read, named in seen:  # and each reading was one release, never parts of two
        assert prefix == f"{named}/" and read == shards[named]
    assert all(opened.read_array(i).shape[0] == 3 for i in range(len(opened)))  # v1, the previous one: whole
    assert fs.exists(f"out/pub/{v1}/release.json")
    # a build killed before its commit: the release and its release.json are untouched
    root_json = fs.cat_file("out/pub/release.json")
    killed = _start([*_args(url, _config(tmp_path, 12)), "--workers", "1"], s3_env.env())
    _wait(lambda: len(fs.find("out/pub/.work/wtc11/units")) >= 4, killed)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait(30)
    assert fs.cat_file("out/pub/release.json") == root_json
    assert len(chammi_data.load("all", root=url, verify=True)) == len(opened)
    # the next commit removes v1 (two generations back) and the killed build's leftovers, keeps v2
    # (the killed build's lock has a 120 s lease; let it have run out)
    fs.pipe_file("out/pub/.chammi-build.lock", json.dumps({"host": "x", "pid": 1, "expires": 0}).encode())
    assert chammi_build(*_args(url, _config(tmp_path, 12)), "--quiet").returncode == 0
    gens = {k.split("/")[2] for k in fs.find("out/pub") if k.split("/")[2].startswith("g-")}
    assert gens == {v2, read_release_json(ReleaseStore(url))["extra"]["generation"]}
    # the reader of v1 now fails loudly, naming the object: it never reads another release's cells
    with pytest.raises(FileNotFoundError, match=v1):
        opened.read_array(0)
