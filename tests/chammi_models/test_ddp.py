"""Two gloo processes under torchrun: both ranks take the same number of steps, and the result matches a
single process with the same global batch (DDP averages the per-rank gradients of equal-size halves)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from chammi_models.training.config import load_config
from chammi_models.training.train import train

ARGS = [
    "optim.max_steps=3",
    "optim.warmup_steps=1",
    "data.batch_size=8",
    "data.image_size=32",
    "data.workers=0",
    "run.eval_at_end=false",
    "run.checkpoint_every=2",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_train(
    release: str | Path,
    out: Path,
    args: list[str],
    env: dict[str, str] | None = None,
    config: str = "tiny_cpu",
) -> str:
    """``torchrun --nproc_per_node 2 -m chammi_cli train --config CONFIG`` on 127.0.0.1, one thread per
    rank, no GPU; returns stdout after checking that the run finished."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    rendezvous = ["--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
    train_cmd = ["-m", "chammi_cli", "train", "--config", config, "--release", str(release)]
    proc = subprocess.run(
        [*torchrun, *rendezvous, *train_cmd, "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", **(env or {})},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "finished" in proc.stdout
    return proc.stdout


@pytest.mark.slow
def test_two_process_gloo_run_matches_single_process(tiny_release: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    torchrun_train(tiny_release, out, ARGS)

    latest = json.loads((out / "checkpoints" / "latest.json").read_text())
    assert latest["world_size"] == 2 and latest["step"] == 3
    folder = out / "checkpoints" / latest["path"]
    ranks = [json.loads((folder / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["step"] for r in ranks] == [3, 3]
    assert ranks[0]["stream"] == ranks[1]["stream"]  # both ranks agree on the global progress

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = train(load_config("tiny_cpu", ARGS), tiny_release, tmp_path / "single")
    finally:
        torch.set_num_threads(n)
    assert single.step == 3
    a = load_file(str(out / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "single" / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-3, atol=1e-5), k


@pytest.mark.slow
def test_two_process_gloo_run_from_s3_equals_the_same_run_from_disk(
    tiny_release: Path, tmp_path: Path
) -> None:
    """Ranks stream a release from an S3-compatible server (moto, on 127.0.0.1) in shards order with two
    persistent workers each; the weights equal those of the same run reading the same files from disk."""
    from tests.servers import S3Server

    args = [*ARGS, "data.workers=2", "data.stream_order=shards", "data.shuffle_buffer=8"]

    with S3Server() as server:
        url = server.upload(tiny_release, "chammi", "tiny")
        torchrun_train(url, tmp_path / "s3", args, server.env())
    torchrun_train(tiny_release, tmp_path / "disk", args)
    a = load_file(str(tmp_path / "s3" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "disk" / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    card = json.loads((tmp_path / "s3" / "model" / "card.json").read_text())
    assert card["training_data"]["release_dir"] == url
