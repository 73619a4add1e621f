"""Resumability for real: `chammi-build` killed with SIGKILL mid-build, rerun, output byte-identical."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.engine import build


def _cmd(raw: Path, out: Path, cfg: Path) -> list[str]:
    return [sys.executable, "-m", "pipelines.cli", "--source", "wtc11", "--input", str(raw), "--output", str(out),
            "--workers", "2", "--config", str(cfg), "--quiet"]


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 120.0) -> None:
    """SIGKILL the whole process group (build + dask workers) as soon as ``ready()`` is true."""
    t0 = time.monotonic()
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"build finished (rc {proc.returncode}) before it could be killed")
        if time.monotonic() - t0 > timeout:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("the kill condition never became true")
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["processing", "writing"])
def test_sigkill_and_rerun_gives_identical_output(wtc_raw: Path, tmp_path: Path, hash_tree, moment: str) -> None:
    cfg = tmp_path / "build.yaml"
    cfg.write_text("cells_per_shard: 4\n")
    reference = tmp_path / "reference"
    assert build("wtc11", input_dir=wtc_raw, output=reference, config=cfg, progress=False, processes=False).ok

    out = tmp_path / "killed"
    spills = out / ".work" / "wtc11" / "units"
    proc = subprocess.Popen(_cmd(wtc_raw, out, cfg), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if moment == "processing":
        _kill_when(proc, lambda: len(list(spills.glob("*.spill"))) >= 8)
    else:
        _kill_when(proc, lambda: len(list((out / "shards" / "wtc11").glob("*.tar"))) >= 1)
    assert not (out / "release.json").exists()
    done_at_kill = len(list(spills.glob("*.spill")))
    assert 8 <= done_at_kill <= 42

    rerun = subprocess.run(_cmd(wtc_raw, out, cfg), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    report = json.loads((out / "build_report.json").read_text())
    # only unfinished units were redone
    assert report["accounting"]["wtc11"]["units_reused"] >= done_at_kill
    assert report["accounting"]["wtc11"]["units_reused"] < 42 or moment == "writing"
    assert hash_tree(out) == hash_tree(reference)
    assert not list(out.rglob("*.tmp"))  # no torn temp files left behind
