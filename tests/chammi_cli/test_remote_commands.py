"""Every command that names a release, run THROUGH ITS COMMAND LINE against a release at a URL, on real
servers on 127.0.0.1: moto's S3 server, the Range HTTP server, and ``python -m http.server`` (which ignores
Range). Faults as a user meets them: a server that stalls (SIGSTOP) or dies (SIGKILL) in the middle of
``chammi validate`` / ``chammi embed`` gives one line on stderr naming the URL within the read deadline, exit
status 2, and no process left; Ctrl-C during ``chammi embed`` with DataLoader workers is one line and 130.
"""

from __future__ import annotations

import filecmp
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from chammi_data.interop.official_export import export_official
from chammi_data.store.remote import DEADLINE_ENV, TIMEOUT_ENV
from tests.servers import HTTPServer, PlainHTTPServer, S3Server, in_session

CHAMMI = [sys.executable, "-m", "chammi_cli"]
DEADLINE_S = 6.0
#: the deadline plus a command's start-up (imports, torch, a model) on a busy 2-core machine
BOUND_S = DEADLINE_S + 25.0
pytestmark = pytest.mark.slow


def command_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        **os.environ,
        "TQDM_DISABLE": "1",
        TIMEOUT_ENV: "2",  # 1 s: a new client's first request outlasted it on a loaded CI machine
        DEADLINE_ENV: str(DEADLINE_S),
        **(extra or {}),
    }
    env.pop("CHAMMI_DEBUG", None)
    return env


def _start(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """A command in its own session (a terminal's process group), its output piped."""
    return subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def run(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run a command in its own session; (the finished process, seconds); fails if a process of it is left."""
    t0 = time.monotonic()
    proc = _start(argv, cwd, env)
    out, err = proc.communicate(timeout=300)
    elapsed = time.monotonic() - t0
    _no_process_left(proc.pid)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err), elapsed


def _no_process_left(sid: int, wait_s: float = 10.0) -> None:
    deadline = time.monotonic() + wait_s
    while in_session(sid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not in_session(sid), f"processes of the command are still running: {in_session(sid)}"


def one_error_line(proc: subprocess.CompletedProcess[str], prog: str) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.startswith(f"{prog}: error")]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small model's weights folder (what ``chammi embed --checkpoint`` takes)."""
    import torch

    from chammi_models.zoo.weights import save_model
    from tests.chammi_models.zoo_helpers import SIZE, small_model

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("weights") / "model"
    save_model(small_model("slice_param", num_classes=0), out, {"img_size": SIZE})
    return out


def _serve(kind: str, release: Path, monkeypatch: pytest.MonkeyPatch | None = None, **stall):
    """(server, URL, extra environment) of ``kind`` serving ``release``; the caller stops the server."""
    if kind == "s3":
        server = S3Server(**stall).start()
        return server, server.upload(release, "chammi", "rel"), server.env()
    server = HTTPServer(release, **stall).start()
    return server, server.url, {}


@pytest.mark.parametrize("kind", ["s3", "http"])
def test_every_release_command_over_a_url(kind, tiny_release, weights, tmp_path, monkeypatch, capsys):
    """validate, export, embed, eval and train --release, each through the ``chammi`` command line (its
    ``main``, in this process: the commands' own parsing and error answer, without 5 interpreter starts)."""
    from chammi_cli import main as chammi
    from chammi_models.embed import embed

    server, url, extra = _serve(kind, tiny_release)
    for k, v in extra.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(tmp_path)
    try:
        assert chammi(["validate", url, "--quiet"]) == 0
        assert " - OK" in capsys.readouterr().out
        assert chammi(["export", url, "exported", "--quiet"]) == 0
        export_official(tiny_release, tmp_path / "local_export", progress=False)
        cmp = filecmp.dircmp(tmp_path / "exported", tmp_path / "local_export")
        assert not cmp.diff_files and not cmp.left_only and not cmp.right_only
        argv = ["embed", "--checkpoint", str(weights), "--release", url, "--out", "feats", "--workers", "2"]
        assert chammi([*argv, "--device", "cpu"]) == 0
        embed(weights, tiny_release, tmp_path / "local_feats", workers=0, device="cpu")
        for folder in ("Allen", "HPA", "CP"):
            a = np.load(tmp_path / "feats" / folder / "features.npy")
            b = np.load(tmp_path / "local_feats" / folder / "features.npy")
            np.testing.assert_array_equal(a, b)
        capsys.readouterr()
        assert (
            chammi(["eval", "--features", "feats", "--release", url, "--out", "scores", "--device", "cpu"])
            == 0
        )
        assert "CPS=" in capsys.readouterr().out
        train = ["train", "--config", "tiny_cpu", "--release", url, "--out", "run", "--stop-after", "2"]
        overrides = ["data.workers=2", "data.batch_size=8", "data.image_size=32", "run.eval_at_end=false"]
        assert chammi([*train, *overrides]) == 0
        assert "stopped at step 2" in capsys.readouterr().out
    finally:
        server.stop()


def _one_error_under_fault(argv: list[str], server, fault: str, env: dict[str, str], cwd: Path, prog: str):
    """Run ``argv`` against a server that stops itself at a known request; for ``killed`` SIGKILL it there.
    Returns (the one error line, seconds from the fault to the exit: the command's start-up, torch imports
    and DataLoader workers included, is not what the deadline bounds); checks exit 2 and that no process is
    left."""
    proc = _start(argv, cwd, env)
    started = time.monotonic()
    while not server.stalled() and proc.poll() is None:
        assert time.monotonic() - started < 120, "the server never stalled"
        time.sleep(0.02)
    t0 = time.monotonic()
    if fault == "killed":
        server.kill()
    out, err = proc.communicate(timeout=300)
    elapsed = time.monotonic() - t0
    _no_process_left(proc.pid)
    return one_error_line(subprocess.CompletedProcess(argv, proc.returncode, out, err), prog), elapsed


@pytest.mark.parametrize(("kind", "fault"), [("s3", "stalled"), ("http", "killed")])
def test_validate_over_a_url_fails_once_when_the_server_stalls_or_dies(kind, fault, tiny_release, tmp_path):
    server, url, extra = _serve(kind, tiny_release, stall_after=2, stall_path="shards/")  # at the 3rd shard
    try:
        argv = [*CHAMMI, "validate", url]
        line, elapsed = _one_error_under_fault(
            argv, server, fault, command_env(extra), tmp_path, "chammi validate"
        )
        assert f"{url}/shards/" in line and "failed after" in line, line
        assert elapsed < BOUND_S, (elapsed, line)
    finally:
        server.resume()
        server.stop()


@pytest.mark.parametrize(("kind", "fault"), [("http", "stalled"), ("s3", "killed")])
def test_embed_over_a_url_with_workers_fails_once_when_the_server_stalls_or_dies(
    kind, fault, tiny_release, weights, tmp_path
):
    server, url, extra = _serve(kind, tiny_release, stall_after=4, stall_path="shards/")
    try:
        argv = [*CHAMMI, "embed", "--checkpoint", str(weights), "--release", url, "--out", "f"]
        argv += ["--workers", "2", "--device", "cpu", "--batch-size", "4"]
        line, elapsed = _one_error_under_fault(
            argv, server, fault, command_env(extra), tmp_path, "chammi embed"
        )
        assert f"{url}/shards/" in line and ": read bytes " in line and "failed after" in line, line
        assert "DataLoader" not in line and elapsed < BOUND_S, (elapsed, line)
    finally:
        server.resume()
        server.stop()


def test_ctrl_c_during_embed_with_workers_is_one_line_and_no_process_left(tiny_release, weights, tmp_path):
    with HTTPServer(tiny_release, delay_ms=150) as server:  # slow enough to be interrupted mid-way
        argv = [*CHAMMI, "embed", "--checkpoint", str(weights), "--release", server.url, "--out", "f"]
        proc = _start(
            [*argv, "--workers", "2", "--device", "cpu", "--batch-size", "2"], tmp_path, command_env()
        )
        assert proc.stderr is not None
        first = proc.stderr.readline()  # the first progress line: the workers are reading
        assert "embed" in first, first
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
        out, err = proc.communicate(timeout=60)
        _no_process_left(proc.pid)
    assert proc.returncode == 130, (proc.returncode, err[-3000:])
    assert err.splitlines()[-1] == "chammi embed: interrupted", err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]


def test_a_server_that_ignores_range_is_read_correctly_and_said_once(tiny_release, tmp_path):
    """``python -m http.server`` answers a ranged request with the whole file (200): tar and zarr reads and
    ``chammi validate`` still read the right bytes, and one line says why reads are slow."""
    import chammi_data

    with PlainHTTPServer(tiny_release) as server:
        proc, _ = run([*CHAMMI, "validate", server.url, "--quiet"], tmp_path, command_env())
        assert proc.returncode == 0, (proc.stdout, proc.stderr[-3000:])
        notes = [line for line in proc.stderr.splitlines() if "ignores Range" in line]
        assert len(notes) == 1 and server.url in notes[0], proc.stderr
        assert "Traceback" not in proc.stderr
        for backend in ("shards", "zarr"):
            local = chammi_data.load("all", root=tiny_release, backend=backend)
            remote = chammi_data.load("all", root=server.url, backend=backend)
            assert not remote.store.check_ranges()
            # DataLoader workers get a store that already knows: they do not say it again
            assert pickle.loads(pickle.dumps(remote.store)).ranges_ignored
            for i in range(0, len(local), 5):
                np.testing.assert_array_equal(remote.read_array(i), local.read_array(i))
        kw = {"split": "all", "seed": 2, "order": "shards", "output": "uint8", "buffer": 8}
        here = [(s["cell_id"], s["image"]) for s in chammi_data.stream(root=tiny_release, **kw)]
        there = [(s["cell_id"], s["image"]) for s in chammi_data.stream(root=server.url, **kw)]
        assert [c for c, _ in here] == [c for c, _ in there]
        assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(here, there, strict=True))
