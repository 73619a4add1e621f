"""The training loop on the tiny release: labels -> classes, group weighting, and the loss goes down."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from chammi_data.format.manifest import read_manifest
from chammi_models.training.config import load_config
from chammi_models.training.objective import Objective, class_index, global_classes
from chammi_models.training.train import train

# 32 x 32 is the smallest input a ConvNeXt (stride 32 overall) accepts; the tiny release has 30 Train cells.
FAST = [
    "data.image_size=32",
    "data.workers=0",
    "run.eval_at_end=false",
    "run.log_every=1",
    "data.batch_size=8",
]


def test_class_index_is_sorted_per_source(tiny_release: Path) -> None:
    classes = class_index(read_manifest(tiny_release), ["cp", "wtc11"])
    assert list(classes) == ["wtc11", "cp"]  # SOURCE_KEYS order, not argument order
    assert classes["cp"] == sorted(classes["cp"]) and "DMSO" in classes["cp"]
    table = global_classes(classes)
    assert table["wtc11"]["M0"] == 0
    assert min(table["cp"].values()) == len(classes["wtc11"])


class _Toy(torch.nn.Module):
    """Stands in for a zoo model: features = mean of each channel; per-sample loss = the first feature."""

    num_features = 2

    def forward(self, images: torch.Tensor, channels: tuple[str, ...]) -> torch.Tensor:
        return images.mean(dim=(2, 3))[:, :2]

    def loss(self, feats: torch.Tensor, targets: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        return feats[:, 0].mean()


def test_group_losses_are_weighted_by_group_size() -> None:
    a = torch.full((3, 2, 1, 1), 1.0)
    b = torch.full((1, 3, 1, 1), 5.0)
    obj = Objective(_Toy(), simclr=None, ssl_lambda=0.0)
    loss, sup, ssl = obj([(a, ("er", "rna"), None, None, None), (b, ("er", "rna", "mito"), None, None, None)])
    # per-sample mean over the whole batch: (3 * 1 + 1 * 5) / 4
    assert loss.item() == pytest.approx(2.0) and sup.item() == pytest.approx(2.0) and ssl.item() == 0.0


@pytest.mark.slow
def test_loss_decreases_and_outputs_are_written(tiny_release: Path, tmp_path: Path) -> None:
    cfg = load_config(
        "tiny_cpu",
        FAST
        + [
            "data.batch_size=30",
            "optim.max_steps=16",
            "optim.warmup_steps=2",
            "optim.lr=2e-3",
            "data.hflip=false",
            "data.scale=[1.0, 1.0]",
            "run.checkpoint_every=8",
        ],
    )
    result = train(cfg, tiny_release, tmp_path / "run")
    assert result.finished and result.step == 16 and len(result.losses) == 16
    first, last = sum(result.losses[:3]) / 3, sum(result.losses[-3:]) / 3
    assert last < 0.7 * first, result.losses
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == list(range(1, 17))
    assert rows[0]["lr"] == pytest.approx(1e-5)  # the warm-up starts at warmup_start_lr
    assert (run / "metrics.csv").read_text().startswith("kind,step,name,value")
    card = json.loads((run / "model" / "card.json").read_text())
    assert card["class_lists"]["hpa"] == sorted(card["class_lists"]["hpa"])
    assert card["training_data"]["manifest_sha256"]
    assert (run / "config.yaml").is_file()
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == ["step-0000008", "step-0000016"]


def test_untrained_model_is_saved_without_steps(tiny_release: Path, tmp_path: Path) -> None:
    cfg = load_config("channel_replication", FAST + ["model.pretrained=null", "model.backbone=convnext_atto"])
    result = train(cfg, tiny_release, tmp_path / "run")
    assert result.total_steps == 0 and result.finished and result.losses == []
    assert (tmp_path / "run" / "model").is_dir()


def test_resume_without_checkpoint_is_an_error(tiny_release: Path, tmp_path: Path) -> None:
    cfg = load_config("tiny_cpu", FAST)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(cfg, tiny_release, tmp_path / "empty", resume=True)
