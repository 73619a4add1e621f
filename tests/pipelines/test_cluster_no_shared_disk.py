"""A dask cluster whose workers share no disk with the client, run as it would be: `dask scheduler` and two
`dask worker` processes, each worker in its own mount namespace with a private tmpfs over /tmp (the temp
root, where the client's folders of these tests live), so a worker cannot read or write anything of the
client's. Raw data in a bucket, the release into a bucket: the release is the local build's, byte for byte.
A local --output or --input folder such workers cannot see is refused in one line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.pipelines.remote import bucket_release, chammi_build, local_release, make_public, s3fs_of
from tests.servers import S3Server, free_port

REPO = Path(__file__).resolve().parents[2]
DASK = Path(sys.executable).with_name("dask")


def _can_unshare() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None or not DASK.exists():
        return False
    probe = ["unshare", "--mount", "--propagation", "private", "sh", "-c", "mount -t tmpfs none /mnt && true"]
    return subprocess.run(probe, capture_output=True, timeout=30).returncode == 0


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not _can_unshare(), reason="needs root, unshare and the dask command"),
]


@pytest.fixture(scope="module")
def cluster(raw_tree: Path):
    """(scheduler address, S3 server): moto with the raw WTC-11 data readable by anyone, a scheduler, and two
    workers that each see a fresh, empty /tmp of their own."""
    procs: list[subprocess.Popen] = []
    logs = Path(tempfile.mkdtemp(prefix="chammi-cluster-logs-", dir="/var/tmp"))
    with S3Server() as s3:
        s3.upload(raw_tree / "wtc11", "raw", "wtc11")
        s3fs_of(s3).mkdir("out")
        make_public(s3, "raw")
        port = free_port()
        address = f"tcp://127.0.0.1:{port}"
        env = {**os.environ, **s3.env(), "PYTHONPATH": str(REPO)}
        try:
            procs.append(
                subprocess.Popen(
                    [str(DASK), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                    stdout=subprocess.DEVNULL,
                    stderr=open(logs / "scheduler.log", "w"),  # noqa: SIM115
                    env=env,
                )
            )
            for i in range(2):
                worker = (
                    f"{_hide_tmp_but_the_code(logs / f'keep{i}')} && cd / && exec {DASK} worker {address} "
                    "--nthreads 1 --nworkers 1 --no-dashboard --local-directory /tmp/dask"
                )
                procs.append(
                    subprocess.Popen(
                        ["unshare", "--mount", "--propagation", "private", "sh", "-c", worker],
                        stdout=subprocess.DEVNULL,
                        stderr=open(logs / f"worker{i}.log", "w"),  # noqa: SIM115
                        env=env,
                    )
                )
            try:
                _wait_for_workers(address, 2)
            except Exception as exc:  # say why: the workers' own logs
                tails = {f.name: f.read_text()[-1500:] for f in sorted(logs.glob("*.log"))}
                raise AssertionError(f"the cluster did not start ({exc}); logs: {tails}") from exc
            yield address, s3
        finally:
            for proc in reversed(procs):
                proc.terminate()
            for proc in reversed(procs):
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(20)
            shutil.rmtree(logs, ignore_errors=True)


def _hide_tmp_but_the_code(keep: Path) -> str:
    """The shell commands that put a private tmpfs over /tmp in a worker's mount namespace, then bind the
    checkout and the Python environment back where they were when they live under /tmp (a CI clone in a temp
    folder): the worker runs the same code, and sees none of the client's other temp folders."""
    under_tmp = sorted({p for p in (REPO, Path(sys.prefix).resolve()) if str(p).startswith("/tmp/")})
    under_tmp = [p for p in under_tmp if not any(q != p and q in p.parents for q in under_tmp)]
    before = [f"mkdir -p {keep}/{j} && mount --bind {p} {keep}/{j}" for j, p in enumerate(under_tmp)]
    after = [f"mkdir -p {p} && mount --bind {keep}/{j} {p}" for j, p in enumerate(under_tmp)]
    return " && ".join([*before, "mount -t tmpfs -o size=512m none /tmp", *after])


def _wait_for_workers(address: str, n: int, timeout: float = 90) -> None:
    from dask.distributed import Client

    deadline = time.monotonic() + timeout
    while True:
        try:
            with Client(address, timeout=10) as client:
                client.wait_for_workers(n, timeout=max(1, deadline - time.monotonic()))
                return
        except (OSError, TimeoutError):
            if time.monotonic() > deadline:
                raise


def test_workers_without_a_shared_disk_build_bucket_to_bucket_the_same_bytes(
    cluster, raw_tree: Path, tmp_path: Path
) -> None:
    address, s3 = cluster
    from dask.distributed import Client

    with Client(address, timeout=10) as client:  # the workers really do not see this machine's folders
        assert not any(client.run(os.path.isdir, str(tmp_path)).values())
        assert not any(client.run(os.path.isdir, str(raw_tree)).values())
    run = chammi_build(
        "--source", "wtc11", "--input", "s3://raw/wtc11", "--anon", "--output", "s3://out/cluster",
        "--scheduler", address, "--quiet", env=s3.env(),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    local = tmp_path / "local"
    assert chammi_build("--source", "wtc11", "--input", str(raw_tree / "wtc11"), "--output", str(local),
                        "--quiet").returncode == 0  # fmt: skip
    assert bucket_release(s3fs_of(s3), "s3://out/cluster")[0] == local_release(local)


def test_folders_the_workers_cannot_see_are_refused_in_one_line(
    cluster, raw_tree: Path, tmp_path: Path
) -> None:
    address, s3 = cluster
    out = chammi_build(
        "--source", "wtc11", "--input", "s3://raw/wtc11", "--anon", "--output", str(tmp_path / "rel"),
        "--scheduler", address, "--quiet", env=s3.env(),
    )  # fmt: skip
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert f"cannot see --output {tmp_path / 'rel'}" in out.stderr and "s3://" in out.stderr
    inp = chammi_build(
        "--source", "wtc11", "--input", str(raw_tree / "wtc11"), "--output", "s3://out/never",
        "--scheduler", address, "--quiet", env=s3.env(),
    )  # fmt: skip
    assert inp.returncode == 2 and "cannot see the wtc11 input folder" in inp.stderr, inp.stderr
