"""SWAD-style dense weight averaging: the running mean of the weights after every optimizer step from a start
step.

The averaged model is the one that gets saved, embedded and evaluated (the reference code computed an
average and then evaluated the last iterate). The zoo's ConvNeXt trunks use LayerNorm, not BatchNorm, so the
average needs no BatchNorm statistics recomputation; buffers (if any) are copied from the latest model.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightAverager:
    """Keeps ``average = mean(weights after step s for s = start .. current)``.

    Args:
        model: the model being trained (unwrapped, not the DDP wrapper); it is deep-copied once.
        start_step: the first optimizer step (1-based count of completed steps) whose weights enter the mean.
    """

    def __init__(self, model: nn.Module, start_step: int) -> None:
        if start_step < 0:
            raise ValueError(f"SWAD start step must be >= 0, got {start_step}")
        self.start_step = int(start_step)
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.count = 0

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> bool:
        """Fold ``model``'s current weights into the mean if ``step >= start_step``; return whether it did."""
        if step < self.start_step:
            return False
        self.count += 1
        src = dict(model.named_parameters())
        for name, avg in self.model.named_parameters():
            p = src[name].detach()
            if self.count == 1:
                avg.copy_(p)
            else:
                # Incremental mean: exact for any count and needs no second copy of the weights.
                avg.add_(p.to(avg.dtype) - avg, alpha=1.0 / self.count)
        for (_, b_avg), (_, b) in zip(self.model.named_buffers(), model.named_buffers(), strict=True):
            b_avg.copy_(b)
        return True

    @property
    def active(self) -> bool:
        """True once at least one step has been averaged."""
        return self.count > 0

    def averaged_model(self) -> nn.Module:
        """The averaged model (shared, not a copy)."""
        return self.model

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors only (loadable with ``weights_only=True``): the averaged weights plus the count."""
        state = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        state["count"] = torch.tensor(self.count, dtype=torch.long)
        state["start_step"] = torch.tensor(self.start_step, dtype=torch.long)
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.count = int(state["count"])
        self.start_step = int(state["start_step"])
        self.model.load_state_dict(
            {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
        )
