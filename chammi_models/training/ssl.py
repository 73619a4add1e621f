"""SimCLR: the NT-Xent / InfoNCE loss over two views of each image, with an optional projection head.

For a batch of B images with views ``z1`` (B, D) and ``z2`` (B, D), the 2B embeddings are stacked as
``[z1; z2]``. Row i's positive is row i + B (and row i + B's positive is row i): the other view of the SAME
image. All other 2B - 2 rows are negatives; a row is never compared with itself. (The reference CHAMMI code
paired mismatched rows; :func:`positive_index` states the pairing once and the tests check it.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def positive_index(batch_size: int, device: torch.device | None = None) -> torch.Tensor:
    """(2B,) long: the index of each row's positive among the stacked views ``[z1; z2]``."""
    idx = torch.arange(batch_size, device=device)
    return torch.cat([idx + batch_size, idx])


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """Normalised-temperature cross-entropy of SimCLR, averaged over the 2B anchors.

    Args:
        z1, z2: (B, D) embeddings of the first and second view; row i of both comes from the same image.
        temperature: divides the cosine similarities (the paper uses about 0.07).

    Returns:
        a scalar loss; log(2B - 1) for embeddings carrying no information, 0 in the limit of perfect pairs.
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(
            f"nt_xent expects two (B, D) tensors of the same shape, got {tuple(z1.shape)} and "
            f"{tuple(z2.shape)}"
        )
    b = z1.shape[0]
    if b < 2:
        raise ValueError("nt_xent needs at least 2 images (otherwise there are no negatives)")
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    logits = z @ z.t() / temperature
    # A row's similarity with itself is excluded from the softmax (it is not a candidate).
    logits = logits.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=z.device), float("-inf"))
    return F.cross_entropy(logits, positive_index(b, z.device))


class ProjectionHead(nn.Module):
    """SimCLR's 2-layer MLP (D -> D -> out_dim) applied to backbone features before the contrastive loss."""

    def __init__(self, in_dim: int, out_dim: int = 128, hidden_dim: int | None = None) -> None:
        super().__init__()
        hidden = hidden_dim or in_dim
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_dim) -> (B, out_dim)."""
        return self.net(x)


class SimCLRLoss(nn.Module):
    """InfoNCE on two views of a batch, through an optional projection head.

    ``loss(f1, f2)`` takes backbone features (B, D) of view 1 and view 2 (row i = the same image).
    """

    def __init__(
        self, dim: int, *, temperature: float = 0.07, projection: bool = True, projection_dim: int = 128
    ) -> None:
        super().__init__()
        self.temperature = float(temperature)
        self.head: nn.Module = ProjectionHead(dim, projection_dim) if projection else nn.Identity()

    def forward(self, f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
        # One pass through the head for both views keeps the two views' statistics identical.
        z = self.head(torch.cat([f1, f2]))
        return nt_xent(z[: f1.shape[0]], z[f1.shape[0] :], self.temperature)


class TwoViews:
    """Wrap a sample transform so that each sample carries two independent augmented views.

    ``image`` holds view 1 and ``meta["view2"]`` view 2 (a (C, H, W) tensor), so the batch collate keeps
    the pair aligned by construction. Both views draw from the same seeded ``generator`` one after the other,
    so the pair depends only on the stream's (seed, epoch, sample index), not on workers or ranks.
    """

    def __init__(self, transform: Callable[..., dict[str, Any]]) -> None:
        self.transform = transform

    def __call__(self, sample: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, Any]:
        first = self.transform(sample, generator=generator)
        second = self.transform(sample, generator=generator)
        meta = dict(first.get("meta") or {})
        meta["view2"] = second["image"]
        return {**first, "meta": meta}

    def __repr__(self) -> str:
        return f"TwoViews({self.transform!r})"


def second_views(batch: dict[str, Any]) -> torch.Tensor:
    """(B, C, H, W) stack of the ``meta["view2"]`` tensors of a collated batch made with :class:`TwoViews`."""
    try:
        return torch.stack([m["view2"] for m in batch["meta"]])
    except KeyError:
        raise KeyError(
            "batch samples carry no meta['view2']: wrap the training transform in TwoViews"
        ) from None
