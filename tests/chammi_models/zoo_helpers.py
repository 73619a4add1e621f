"""Helpers shared by the model-zoo tests: small CPU models (convnext_atto, 32x32 inputs)."""

from __future__ import annotations

import torch

from chammi_models import create_model

# 2 cores shared by many processes: one thread avoids OpenMP spin-waiting under oversubscription
torch.set_num_threads(1)

#: Input side for forward tests: the smallest size every ConvNeXt stage still sees (32 / 32 = 1 pixel).
SIZE = 32


def small_model(name: str, **options):
    """A small instance of a registered model for CPU tests."""
    if name == "channel_vit":
        options = {"img_size": SIZE, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, **options}
    return create_model(name, backbone="convnext_atto", **options)


def first_layer_parameters(model) -> list[torch.nn.Parameter]:
    """Parameters of the layer that first sees the image (per strategy)."""
    if hasattr(model, "first_layer"):
        return list(model.first_layer.parameters())
    if hasattr(model, "nets"):  # FixedChannels: every per-source stem
        return [p for net in model.nets.values() for p in net.stem.parameters()]
    if hasattr(model, "patch_embed"):  # channel_vit
        return [*model.patch_embed.parameters(), model.channel_embed]
    return list(model.stem.parameters())
