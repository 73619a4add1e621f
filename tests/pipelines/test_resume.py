"""Crash safety for real: `chammi-build` killed with SIGKILL in each phase, then rerun: the output is
byte-identical to an uninterrupted build and holds exactly the release files (no spills, staging, lock or temp
file)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.engine.build import build

#: what a finished build leaves in OUTPUT (without --keep-work)
RELEASE = ["build_report.json", "manifest.csv", "manifest.parquet", "release.json", "shards", "zarr"]

#: runs chammi-build; for the phases too short to catch by polling, a patch stops the process there (after
#: leaving what a kill at that moment leaves, and a marker file) until it is killed
HARNESS = """
import sys, time, uuid
from pathlib import Path

phase, marker, args = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]

def stop():
    marker.touch()
    time.sleep(600)

if phase == "discover":
    from pipelines.sources.wtc11.pipeline import WTC11Pipeline
    real = WTC11Pipeline.discover
    WTC11Pipeline.discover = lambda self, input_dir, opts: (real(self, input_dir, opts), stop())[0]
elif phase == "finalize":
    import chammi_data.format.writer as writer

    def write_manifest(root, df):  # killed while manifest.parquet is written: a 0-byte temp file is left
        (Path(root) / f".manifest.parquet.{uuid.uuid4().hex}.tmp").write_bytes(b"")
        stop()
    writer.write_manifest = write_manifest
from chammi_cli.build import main
sys.exit(main(args))
"""


def _args(raw: Path, out: Path, cfg: Path) -> list[str]:
    return [
        "--source",
        "wtc11",
        "--input",
        str(raw),
        "--output",
        str(out),
        "--workers",
        "2",
        "--config",
        str(cfg),
        "--quiet",
    ]


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


@pytest.fixture(scope="module")
def reference(wtc_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(build config, release) of an uninterrupted build."""
    root = tmp_path_factory.mktemp("reference")
    cfg = root / "build.yaml"
    cfg.write_text("cells_per_shard: 4\n")
    assert build(
        "wtc11", input_dir=wtc_raw, output=root / "rel", config=cfg, progress=False, processes=False
    ).ok
    return cfg, root / "rel"


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["discover", "units", "writing", "finalize"])
def test_sigkill_in_each_phase_then_rerun(
    wtc_raw: Path, tmp_path: Path, hash_tree, reference, phase: str
) -> None:
    cfg, ref = reference
    out, marker = tmp_path / "killed", tmp_path / "marker"
    spills = out / ".work" / "wtc11" / "units"
    proc = subprocess.Popen(
        [sys.executable, "-c", HARNESS, phase, str(marker), *_args(wtc_raw, out, cfg)],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ready = {
        "discover": marker.exists,
        "finalize": marker.exists,
        "units": lambda: len(list(spills.glob("*.spill"))) >= 8,
        "writing": lambda: len(list((out / ".staging" / "shards" / "wtc11").glob("*.tar"))) >= 1,
    }[phase]
    _kill_when(proc, ready)
    assert not (out / "release.json").exists()
    done_at_kill = len(list(spills.glob("*.spill")))
    # what an older build killed while writing its manifest in place left in the release folder
    (out / ".manifest.parquet.0123456789abcdef.tmp").write_bytes(b"")

    rerun = subprocess.run(
        [sys.executable, "-m", "chammi_cli.build", *_args(wtc_raw, out, cfg)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    report = json.loads((out / "build_report.json").read_text())
    reused = report["accounting"]["wtc11"]["units_reused"]  # only unfinished units were redone
    assert reused >= done_at_kill and (reused < 42 or phase in ("writing", "finalize"))
    assert hash_tree(out) == hash_tree(ref)
    assert sorted(p.name for p in out.iterdir()) == RELEASE
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp") or ".tmp-" in p.name]
