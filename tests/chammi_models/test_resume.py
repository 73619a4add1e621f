"""Resume is exact: N steps straight == N/2 steps, stop, resume to N (bitwise on CPU), with SSL + TPS + SWAD
on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from chammi_models.training.config import load_config
from chammi_models.training.train import train

# batch 8 of 30 Train cells -> 3 steps per epoch: 5 steps cross an epoch boundary, stopping at 2 is mid-epoch.
OVERRIDES = [
    "data.image_size=32",
    "data.workers=0",
    "data.batch_size=8",
    "optim.max_steps=5",
    "optim.warmup_steps=2",
    "run.eval_at_end=false",
    "run.log_every=1",
    "data.tps_p=0.5",
    "loss.ssl_lambda=0.5",
    "loss.swad_start=3",
]


def _final_state(run: Path) -> dict[str, torch.Tensor]:
    folder = run / "checkpoints" / json.loads((run / "checkpoints" / "latest.json").read_text())["path"]
    state = torch.load(folder / "state.pt", weights_only=True)
    flat = {f"objective.{k}": v for k, v in state["objective"].items()}
    flat.update({f"swad.{k}": v for k, v in state["swad"].items()})
    for pid, pstate in state["optimizer"]["state"].items():
        flat.update({f"optim.{pid}.{k}": v for k, v in pstate.items()})
    return flat


@pytest.mark.slow
def test_interrupted_and_resumed_equals_uninterrupted(tiny_release: Path, tmp_path: Path) -> None:
    cfg = load_config("tiny_cpu", OVERRIDES)
    straight = train(cfg, tiny_release, tmp_path / "straight")
    assert straight.finished

    first = train(cfg, tiny_release, tmp_path / "resumed", stop_after=2)
    assert first.step == 2 and not first.finished and first.weights_dir is None
    # disturb every global RNG the resumed call must restore
    torch.manual_seed(1234)
    second = train(load_config("tiny_cpu", OVERRIDES), tiny_release, tmp_path / "resumed", resume=True)
    assert second.step == 5 and second.finished and len(second.losses) == 3

    assert first.losses + second.losses == straight.losses
    a, b = _final_state(tmp_path / "straight"), _final_state(tmp_path / "resumed")
    assert a.keys() == b.keys() and len(a) > 10
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after resume"
    wa = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    wb = load_file(str(tmp_path / "resumed" / "model" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_with_a_changed_config_is_refused(tiny_release: Path, tmp_path: Path) -> None:
    base = [
        "data.image_size=32",
        "data.workers=0",
        "data.batch_size=8",
        "optim.max_steps=3",
        "run.eval_at_end=false",
    ]
    train(load_config("tiny_cpu", base), tiny_release, tmp_path / "run", stop_after=1)
    with pytest.raises(ValueError, match="optim"):
        train(load_config("tiny_cpu", base + ["optim.lr=0.1"]), tiny_release, tmp_path / "run", resume=True)
    # run.* settings (cadence, logging) may change
    done = train(
        load_config("tiny_cpu", base + ["run.log_every=2"]), tiny_release, tmp_path / "run", resume=True
    )
    assert done.step == 3


def test_sigterm_checkpoints_and_stops(
    tiny_release: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import signal

    import chammi_models.training.train as train_mod

    real_step = train_mod.train_step
    calls = []

    def step_then_signal(*args, **kwargs):
        out = real_step(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # a preemption notice arrives during step 2
        return out

    monkeypatch.setattr(train_mod, "train_step", step_then_signal)
    base = [
        "data.image_size=32",
        "data.workers=0",
        "data.batch_size=8",
        "optim.max_steps=4",
        "run.eval_at_end=false",
    ]
    before = signal.getsignal(signal.SIGTERM)
    result = train(load_config("tiny_cpu", base), tiny_release, tmp_path / "run")
    assert result.step == 2 and not result.finished
    assert json.loads((tmp_path / "run" / "checkpoints" / "latest.json").read_text())["step"] == 2
    assert signal.getsignal(signal.SIGTERM) == before  # the run's handler is uninstalled
    monkeypatch.undo()
    assert train(load_config("tiny_cpu", base), tiny_release, tmp_path / "run", resume=True).step == 4
