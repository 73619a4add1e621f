"""Training on CHAMMI-75: the tiny config through the command line, exact resume with guided crops and bag of
channels, a 2-process DDP run, and the trained model embedding CHAMMI's sources through the synonym table."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import chammi_cli
from chammi_data.augment.transforms import Normalize
from chammi_models.training.config import load_config
from chammi_models.training.train import train
from tests.chammi_models.test_ddp import torchrun_train

SHORT = ["optim.max_steps=4", "optim.warmup_steps=1", "run.checkpoint_every=2", "data.image_size=32"]


@pytest.mark.slow
def test_tiny_config_trains_and_its_model_embeds_chammi_by_opt_in(
    c75_release, tiny_release, tmp_path, capsys
):
    run = tmp_path / "run"
    argv = ["train", "--config", "chammi75_tiny_cpu", "--release", str(c75_release), "--out", str(run)]
    assert chammi_cli.main([*argv, *SHORT]) == 0
    card = json.loads((run / "model" / "card.json").read_text())
    assert card["vocabulary"] == "chammi75" and card["normalisation"] == "per_sample"
    assert card["num_classes"] == 0 and card["training_data"]["train_sources"] == ["chammi75"]
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert losses and all(torch.isfinite(torch.tensor(v)) for v in losses)
    feats = tmp_path / "features"
    embed = ["embed", "--checkpoint", str(run), "--release", str(tiny_release), "--out", str(feats)]
    capsys.readouterr()
    assert chammi_cli.main([*embed, "--workers", "0"]) == 2  # CP's mito and golgi are not CHAMMI-75 types
    assert "translate_inputs" in capsys.readouterr().err
    assert chammi_cli.main([*embed, "--workers", "0", "--translate-channels", "chammi->chammi75"]) == 0
    info = json.loads((feats / "embedding.json").read_text())
    assert info["channel_translation"] == "chammi->chammi75" and set(info["rows"]) == {"Allen", "HPA", "CP"}
    scores = [
        "eval",
        "--features",
        str(feats),
        "--release",
        str(tiny_release),
        "--out",
        str(tmp_path / "eval"),
    ]
    assert chammi_cli.main(scores) == 0


@pytest.mark.slow
def test_resume_is_bitwise_with_guided_crops_and_bag_of_channels(c75_release, tmp_path):
    args = [*SHORT, "data.bag_of_channels=true", "data.batch_size=6"]
    config = load_config("chammi75_tiny_cpu", args)
    whole = train(config, c75_release, tmp_path / "whole")
    part = train(config, c75_release, tmp_path / "part", stop_after=2)
    assert part.step == 2 and not part.finished
    resumed = train(config, c75_release, tmp_path / "part", resume=True)
    assert resumed.finished and whole.losses[2:] == resumed.losses
    a = load_file(str(tmp_path / "whole" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "part" / "model" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_two_process_gloo_run_on_the_sample(c75_release, tmp_path):
    out = tmp_path / "ddp"
    torchrun_train(c75_release, out, [*SHORT, "optim.max_steps=3"], config="chammi75_tiny_cpu")
    latest = json.loads((out / "checkpoints" / "latest.json").read_text())
    assert latest["world_size"] == 2 and latest["step"] == 3
    folder = out / "checkpoints" / latest["path"]
    ranks = [json.loads((folder / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["step"] for r in ranks] == [3, 3] and ranks[0]["stream"] == ranks[1]["stream"]
    weights = load_file(str(out / "model" / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_config_checks_for_label_free_training():
    config = load_config("chammi75_tiny_cpu")
    assert config.data.train_sources == ["chammi75"] and config.loss.proxy_lambda == 0
    with pytest.raises(ValueError, match="both 0: no loss"):
        load_config("chammi75_tiny_cpu", ["loss.ssl_lambda=0"])
    with pytest.raises(ValueError, match="non-empty unless run.eval_at_end is false"):
        load_config("chammi75_tiny_cpu", ["run.eval_at_end=true"])
    with pytest.raises(ValueError, match="data.train_sources"):
        load_config("chammi75_tiny_cpu", ["data.train_sources=[jump]"])
    with pytest.raises(ValueError, match="data.normalisation"):
        load_config("chammi75_tiny_cpu", ["data.normalisation=global"])


def test_per_sample_normalisation():
    image = torch.rand(3, 20, 30) * torch.tensor([0.1, 0.5, 0.0]).view(3, 1, 1) + 0.2
    out = Normalize("per_sample")({"image": image, "channels": ("r", "g", "b"), "source": "chammi75"})[
        "image"
    ]
    flat = out.reshape(3, -1)
    torch.testing.assert_close(flat[:2].mean(1), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(flat[:2].std(1, unbiased=False), torch.ones(2), atol=1e-4, rtol=0)
    assert torch.isfinite(flat[2]).all() and flat[2].abs().max() < 1e-4  # a constant channel stays finite
    with pytest.raises(ValueError, match="per_sample"):
        Normalize("global")
