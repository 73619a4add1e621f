"""Proxy loss: one trainable proxy vector per class, a temperature-scaled softmax over distances.

The paper's models have no classifier head. Each class owns a learnable proxy in feature space; features
and proxies are L2-normalised and multiplied by ``scale = sqrt(1 / temperature)``, and the logits are the
negative squared distances ``-|s f - s p|^2 = 2 s^2 cos(f, p) - 2 s^2``. The constant drops out of the
softmax, so this equals a cosine softmax with logits ``2 cos / temperature``; we compute that form (cheaper,
same gradients) and a test checks it against the distance form.

Unlike the reference code (which never handed the proxies to its optimizer), the proxies here are ordinary
``nn.Parameter`` s of the model, so ``model.parameters()`` trains them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class ProxyLoss(nn.Module):
    """Softmax cross-entropy over cosine similarities to trainable class proxies.

    Args:
        num_classes: number of proxies (classes), >= 1.
        dim: feature dimension D.
        temperature: softmax temperature T of the distance form (paper: 0.05-0.15, default 0.07).
        learnable_temperature: learn ``log(1/T)`` as a parameter (the paper's ``learnable_temp``).

    ``loss(features (B, D), targets (B,) int64 class indices, classes=None) -> scalar``. ``classes``, an
    optional 1-D sequence of class indices, restricts the softmax to those proxies (e.g. the classes of one
    source, so that a per-source trunk never competes against another trunk's proxies); every target must
    then be among them.
    """

    def __init__(
        self, num_classes: int, dim: int, temperature: float = 0.07, learnable_temperature: bool = False
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"ProxyLoss needs num_classes >= 1, got {num_classes}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.num_classes = num_classes
        self.dim = dim
        # randn / 8 like the reference; the scale is irrelevant after normalisation
        self.proxies = nn.Parameter(torch.randn(num_classes, dim) / 8)
        if learnable_temperature:
            self.log_inv_temperature = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))
        else:
            self.register_buffer(
                "log_inv_temperature", torch.tensor(math.log(1.0 / temperature)), persistent=False
            )

    @property
    def temperature(self) -> float:
        return float(torch.exp(-self.log_inv_temperature.detach()))

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """(B, D) features -> (B, num_classes) logits ``2 cos(f, p) / T``."""
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise ValueError(f"features must be (B, {self.dim}), got {tuple(features.shape)}")
        f = F.normalize(features, dim=1)
        p = F.normalize(self.proxies, dim=1)
        return 2.0 * torch.exp(self.log_inv_temperature) * (f @ p.T)

    def forward(
        self,
        features: torch.Tensor,
        targets: torch.Tensor,
        classes: torch.Tensor | list[int] | tuple[int, ...] | None = None,
    ) -> torch.Tensor:
        """Mean cross-entropy of the proxy softmax; see the class docstring."""
        targets = torch.as_tensor(targets, device=features.device).long()
        if targets.shape != (features.shape[0],):
            raise ValueError(f"targets must be ({features.shape[0]},), got {tuple(targets.shape)}")
        if targets.numel() and (targets.min() < 0 or targets.max() >= self.num_classes):
            raise ValueError(
                f"targets must lie in [0, {self.num_classes}), got {targets.min()}..{targets.max()}"
            )
        logits = self.logits(features)
        if classes is not None:
            classes = torch.as_tensor(classes, device=features.device).long()
            # position of each global class inside the restricted set; -1 where absent
            lookup = torch.full((self.num_classes,), -1, dtype=torch.long, device=features.device)
            lookup[classes] = torch.arange(classes.numel(), device=features.device)
            local = lookup[targets]
            if (local < 0).any():
                bad = sorted(set(targets[local < 0].tolist()))
                raise ValueError(f"targets {bad} are not among the allowed classes {classes.tolist()}")
            logits, targets = logits[:, classes], local
        return F.cross_entropy(logits, targets)

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B,) index of the nearest proxy by cosine similarity."""
        return self.logits(features).argmax(dim=1)
