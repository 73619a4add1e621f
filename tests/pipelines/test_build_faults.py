"""Faults of the user's folder and machine, through the real `chammi-build` command (issue 18, sections 3-4):
an output folder holding someone else's files, an output location that cannot be written, a full disk,
Ctrl-C, and dask's own noise in a user's terminal."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]


def _build(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "chammi_cli.build", *args], capture_output=True, text=True, timeout=300, **kw
    )


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    "files, named",
    [
        (  # the case: files of the user's inside shards/ and zarr/, and a manifest.csv of theirs
            {"shards/mydata.bin": "x", "zarr/important.txt": "x", "manifest.csv": "a,b"},
            "did not write (shards/mydata.bin, zarr/important.txt)",
        ),
        ({"manifest.csv": "a,b"}, "holds manifest.csv but no release.json"),
        ({"notes.txt": "mine"}, "did not write (notes.txt)"),
        ({"release.json": '{"package": "other"}', "shards/wtc11/wtc11-000000.tar": "x"}, "did not write"),
    ],
)
def test_an_output_folder_with_foreign_files_is_refused_and_left_alone(
    wtc_raw: Path, tmp_path: Path, files: dict[str, str], named: str
) -> None:
    out = tmp_path / "U"
    for rel, text in files.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(text)
    before = _tree(out)
    run = _build("--source", "wtc11", "--input", str(wtc_raw), "--output", str(out), "--quiet")
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("chammi-build: error: --output") and named in lines[0]
    assert _tree(out) == before  # nothing deleted, nothing overwritten, nothing added


@pytest.mark.parametrize(
    "output, says",
    [("ftp2x://bucket/out", "unknown storage scheme ftp2x://"), ("https://host/out", "read-only")],
)
def test_an_output_that_cannot_be_written_is_refused_before_writing(
    tmp_path: Path, output: str, says: str
) -> None:
    run = _build("--source", "wtc11", "--output", output, "--quiet", cwd=tmp_path)
    assert run.returncode == 2 and says in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # not a folder named "ftp2x:" or "https:"


def _can_mount() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"], capture_output=True, timeout=30
    )
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _can_mount(), reason="needs root and unshare to mount a small tmpfs")
def test_a_full_disk_is_one_line_naming_the_path_and_the_bytes(wtc_raw: Path, tmp_path: Path) -> None:
    """The output on a 1 MB tmpfs (mounted in a private mount namespace): one line naming the file and the
    bytes the build still needs, exit 2; the partial staging is removed and the finished units are kept."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    script = (
        f"mount -t tmpfs -o size=1m none {mnt} && "
        f"{sys.executable} -m chammi_cli.build --source wtc11 --input {wtc_raw} --output {mnt}/rel "
        f"--workers 2 --quiet 2> {tmp_path}/err.txt; echo rc=$? > {tmp_path}/rc.txt; "
        f"ls -A {mnt}/rel > {tmp_path}/ls.txt; ls {mnt}/rel/.work/wtc11/units | wc -l > {tmp_path}/spills.txt"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script], env=env, timeout=300
    )
    err = (tmp_path / "err.txt").read_text()
    assert (tmp_path / "rc.txt").read_text().strip() == "rc=2", err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"chammi-build: error: disk full writing {mnt}/rel/"), err
    assert "needs about" in lines[0] and "MB more" in lines[0] and "MB free" in lines[0], err
    assert "rerun the same command to resume" in lines[0], err
    assert ".staging" not in (tmp_path / "ls.txt").read_text().split()  # the partial release is gone
    assert int((tmp_path / "spills.txt").read_text()) >= 1  # what was finished is kept for the rerun


@pytest.mark.slow
def test_ctrl_c_is_one_line_exit_130_and_stops_every_process(wtc_raw: Path, tmp_path: Path) -> None:
    """SIGINT to the whole process group, as a terminal sends it, while the dask workers run units."""
    out = tmp_path / "rel"
    proc = subprocess.Popen(
        [sys.executable, "-m", "chammi_cli.build", "--source", "wtc11", "--input", str(wtc_raw)]
        + ["--output", str(out), "--workers", "2", "--quiet", "--config", str(_tiny_batches(tmp_path))],
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not list((out / ".work" / "wtc11" / "units").glob("*.spill")):
        assert proc.poll() is None and time.monotonic() < deadline, "the build never started its units"
        time.sleep(0.02)
    children = psutil.Process(proc.pid).children(recursive=True)
    assert len(children) >= 2  # the dask worker processes (and their nannies' helpers)
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(60) == 130
    err = proc.stderr.read()
    assert err.strip().splitlines() == ["chammi-build: interrupted"], err
    gone = psutil.wait_procs(children, timeout=30)[1]
    assert not [p for p in gone if p.status() != psutil.STATUS_ZOMBIE]  # workers stopped
    assert not (out / ".chammi-build.lock").exists()


def _tiny_batches(tmp_path: Path) -> Path:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("cells_per_shard: 8\n")
    return cfg


@pytest.mark.slow
def test_a_successful_build_prints_no_dask_noise(wtc_raw: Path, tmp_path: Path) -> None:
    run = _build(
        "--source", "wtc11", "--input", str(wtc_raw), "--output", str(tmp_path / "r"), "--workers", "2",
        "--quiet",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stderr.strip() == "", run.stderr  # no heartbeat traceback, no port warning, no log line
