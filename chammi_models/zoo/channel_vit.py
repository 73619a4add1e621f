"""channel_vit: a ViT over channel-patch tokens (the ChannelViT / DiChaViT / ChA-MAEViT family).

Every channel of the input is patchified on its own by ONE shared projection (Conv2d(1, D, p, p)); each
token gets a learned embedding of its channel (by name, through the model vocabulary) plus a learned 2-D
positional embedding shared by all channels. A single transformer attends over all C x N channel-patch
tokens (plus a CLS token); the feature is the CLS token or the mean of the patch tokens after the final
LayerNorm. Channel identity therefore comes only from the names, and any subset of known names in any
order is a valid input.

``sample_channels=True`` enables hierarchical channel sampling in training (ChannelViT): for each batch a
size k ~ U{min_channels..C} is drawn, then k of the input's channels at random; evaluation always sees all
channels. Positional embeddings are learned for ``img_size`` and bicubically resized for other sizes.

Default sizes are small (D=192, depth 6, 3 heads, patch 16: about 2.76M parameters with 14 proxies); ViT-S is
``embed_dim=384, depth=12, num_heads=6``. No pretrained ConvNeXt initialisation applies to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn

from chammi_data.format.vocab import VOCAB
from chammi_models.zoo.base import ChannelAdaptiveModel, check_vocabulary
from chammi_models.zoo.registry import register_model
from chammi_models.zoo.strategies import attach_proxy_head


class ChannelViT(ChannelAdaptiveModel):
    """Transformer over per-channel patch tokens; ``forward(images (B,C,H,W), names) -> (B, embed_dim)``."""

    def __init__(
        self,
        channels: Sequence[str | int] = VOCAB,
        *,
        embed_dim: int = 192,
        depth: int = 6,
        num_heads: int = 3,
        patch_size: int = 16,
        img_size: int = 224,
        mlp_ratio: float = 4.0,
        pool: str = "cls",
        sample_channels: bool = False,
        min_channels: int = 1,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__(channels)
        if pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', got {pool!r}")
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.patch_size = patch_size
        self.pool = pool
        self.sample_channels = sample_channels
        self.min_channels = max(1, min_channels)
        self.num_features = embed_dim
        self.grid = img_size // patch_size
        self.patch_embed = nn.Conv2d(1, embed_dim, patch_size, stride=patch_size)
        self.channel_embed = nn.Parameter(torch.zeros(len(self.channels), embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid * self.grid, embed_dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        # plain floats, on any default device
        rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.blocks = nn.Sequential(
            *[Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, drop_path=r) for r in rates]
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        for p in (self.channel_embed, self.pos_embed, self.cls_token):
            nn.init.trunc_normal_(p, std=0.02)

    def _pos_embed(self, h: int, w: int) -> torch.Tensor:
        """(1, h*w, D) positional embedding for an h x w patch grid."""
        if (h, w) == (self.grid, self.grid):
            return self.pos_embed
        grid = self.pos_embed.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        return grid.flatten(2).transpose(1, 2)

    def _sample(self, images: torch.Tensor, names: tuple[str, ...]) -> tuple[torch.Tensor, tuple[str, ...]]:
        c = len(names)
        low = min(self.min_channels, c)
        k = int(torch.randint(low, c + 1, ()).item())
        keep = torch.randperm(c)[:k].sort().values.tolist()
        return images[:, keep], tuple(names[i] for i in keep)

    def forward_features(self, images: torch.Tensor, names: tuple[str, ...]) -> torch.Tensor:
        if self.training and self.sample_channels and len(names) > 1:
            images, names = self._sample(images, names)
        b, c, hh, ww = images.shape
        if hh % self.patch_size or ww % self.patch_size:
            raise ValueError(f"image size {hh}x{ww} is not a multiple of the patch size {self.patch_size}")
        x = self.patch_embed(images.reshape(b * c, 1, hh, ww))  # (B*C, D, h, w)
        h, w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2) + self._pos_embed(h, w)  # (B*C, N, D)
        chan = self.channel_embed[self.channel_positions(names)]  # (C, D)
        x = (x.view(b, c, h * w, -1) + chan[None, :, None, :]).reshape(b, c * h * w, -1)
        x = torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1)
        x = self.norm(self.blocks(x))
        return x[:, 0] if self.pool == "cls" else x[:, 1:].mean(dim=1)


@register_model("channel_vit")
def channel_vit(
    channels: Sequence[str | int] = VOCAB,
    num_classes: int | None = None,
    backbone: str = "convnext_tiny",
    *,
    temperature: float = 0.07,
    learnable_temperature: bool = False,
    **vit_options: Any,
) -> ChannelAdaptiveModel:
    """ChannelViT builder; ``backbone`` is ignored (the size comes from :class:`ChannelViT`'s options)."""
    model = ChannelViT(check_vocabulary(channels), **vit_options)
    return attach_proxy_head(model, num_classes, temperature, learnable_temperature)


#: the options beyond the builder's own are :class:`ChannelViT`'s (see ``registry.model_options``)
channel_vit.options_from = ChannelViT  # type: ignore[attr-defined]
