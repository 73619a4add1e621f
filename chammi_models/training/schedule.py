"""AdamW with a per-step cosine learning-rate schedule and linear warm-up (the paper's recipe).

The learning rate rises linearly from ``warmup_start_lr`` to ``lr`` over ``warmup_steps`` optimizer steps,
then follows half a cosine from ``lr`` down to ``min_lr`` at ``total_steps``, and stays at ``min_lr`` after.
The schedule is a pure function of the step, so resuming restores it exactly from the step alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch.optim.lr_scheduler import LRScheduler


def lr_at(
    step: int, *, lr: float, total_steps: int, warmup_steps: int, warmup_start_lr: float, min_lr: float
) -> float:
    """Learning rate used by optimizer step ``step`` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return warmup_start_lr + (lr - warmup_start_lr) * step / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


class WarmupCosine(LRScheduler):
    """Linear warm-up then cosine decay, stepped once per optimizer step.

    Every parameter group gets the same absolute learning rate (scaled by the group's ``lr_scale`` if it has
    one, so a group can train slower without a second schedule).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        total_steps: int,
        warmup_steps: int,
        warmup_start_lr: float,
        min_lr: float,
        last_epoch: int = -1,
    ) -> None:
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.warmup_start_lr = float(warmup_start_lr)
        self.min_lr = float(min_lr)
        # The peak rate of each group is captured once, before the base class overwrites group["lr"].
        for group in optimizer.param_groups:
            group.setdefault("peak_lr", group["lr"])
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:  # type: ignore[override]
        step = max(0, self.last_epoch)
        return [
            lr_at(
                step,
                lr=g["peak_lr"],
                total_steps=self.total_steps,
                warmup_steps=self.warmup_steps,
                warmup_start_lr=min(self.warmup_start_lr, g["peak_lr"]),
                min_lr=min(self.min_lr, g["peak_lr"]),
            )
            * g.get("lr_scale", 1.0)
            for g in self.optimizer.param_groups
        ]


def build_optimizer(
    params: Iterable[torch.nn.Parameter],
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.999),
) -> torch.optim.AdamW:
    """AdamW over every trainable parameter (trunk, first layers, proxies, projection head).

    The reference code leaves the proxies out of the optimizer; passing everything here trains them.
    ``foreach`` is pinned off so CPU results do not depend on which fused kernel torch picks.
    """
    trainable = [p for p in params if p.requires_grad]
    if not trainable:
        raise ValueError("no trainable parameters to optimize")
    return torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay, betas=betas, foreach=False)


def steps_for(
    *,
    num_samples: int,
    batch_size: int,
    epochs: float,
    warmup_epochs: float,
    max_steps: int | None,
    warmup_steps: int | None,
) -> tuple[int, int, int]:
    """(steps_per_epoch, total_steps, warmup_steps) from the dataset size and the config.

    ``num_samples`` is the number of training cells, ``batch_size`` the global batch. A partial last batch is
    dropped (every rank takes the same number of steps), so an epoch is ``num_samples // batch_size`` steps.
    """
    if num_samples < batch_size:
        raise ValueError(f"{num_samples} training cells are fewer than one global batch of {batch_size}")
    per_epoch = num_samples // batch_size
    total = int(max_steps) if max_steps is not None else int(round(epochs * per_epoch))
    warm = int(warmup_steps) if warmup_steps is not None else int(round(warmup_epochs * per_epoch))
    return per_epoch, total, min(warm, total)
