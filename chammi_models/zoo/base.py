"""The calling convention every model of the zoo shares.

``model(images, channels) -> features``:
    images   float tensor (B, C, H, W), normalised per channel by the data pipeline;
    channels C channel names from ``chammi_data.format.vocab.VOCAB`` (or their indices), naming the input's
             channels in order. The model never infers channel identity from a source name.
    features (B, model.num_features) float.

A model also carries
    ``model.channels``      the vocabulary it knows (names it has weights for),
    ``model.num_features``  D,
    ``model.proxy_loss``    a :class:`chammi_models.zoo.losses.ProxyLoss` (trainable proxies) or None,
    ``model.model_config``  the ``create_model`` arguments that rebuild it (saved in weight cards).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from chammi_data.format.vocab import SOURCES, VOCAB, to_names
from chammi_models.zoo.losses import ProxyLoss

#: The paper's training classes: WTC 6 cell-cycle stages, HPA 4 localisations, CP 3 compounds + DMSO.
PAPER_CLASSES: dict[str, int] = {"wtc11": 6, "hpa": 4, "cp": 4}
#: One label space over all three sources (what Table 1's single-model counts include): 14 proxies.
PAPER_NUM_CLASSES: int = sum(PAPER_CLASSES.values())


def check_vocabulary(channels: Sequence[str | int]) -> tuple[str, ...]:
    """Normalise a model vocabulary (names or indices into VOCAB) to names; at least one channel."""
    names = to_names(channels)
    if not names:
        raise ValueError("a model needs at least one channel in its vocabulary")
    return names


class ChannelAdaptiveModel(nn.Module):
    """Base class: checks the input against its channel names, then calls :meth:`forward_features`.

    Subclasses set ``self.num_features`` and implement ``forward_features(images, names)``.
    """

    num_features: int

    def __init__(self, channels: Sequence[str | int] = VOCAB) -> None:
        super().__init__()
        self.channels: tuple[str, ...] = check_vocabulary(channels)
        self.proxy_loss: ProxyLoss | None = None
        self.model_config: dict[str, Any] = {}

    # -- channel handling -------------------------------------------------------------------------------
    def channel_names(self, images: torch.Tensor, channels: Sequence[str | int]) -> tuple[str, ...]:
        """Validate ``channels`` for ``images`` and return them as names.

        Raises ``ValueError`` when the count differs from the image's channel axis and ``KeyError`` for a
        name outside this model's vocabulary.
        """
        if isinstance(channels, str):
            raise TypeError(f"channels must be a sequence of names, not the single string {channels!r}")
        names = to_names(channels)
        if images.ndim != 4:
            raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
        if images.shape[1] != len(names):
            raise ValueError(
                f"images have {images.shape[1]} channels but {len(names)} channel names were given: {names}"
            )
        unknown = [n for n in names if n not in self.channels]
        if unknown:
            raise KeyError(f"channels {unknown} are not in this model's vocabulary {self.channels}")
        return names

    def channel_positions(self, names: Sequence[str]) -> list[int]:
        """Positions of ``names`` in this model's vocabulary (for slicing per-name parameter banks)."""
        return [self.channels.index(n) for n in names]

    # -- forward ----------------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, channels: Sequence[str | int]) -> torch.Tensor:
        """(B, C, H, W) images + C channel names -> (B, num_features) features."""
        names = self.channel_names(images, channels)
        return self.forward_features(images, names)

    def forward_features(self, images: torch.Tensor, names: tuple[str, ...]) -> torch.Tensor:
        raise NotImplementedError

    # -- training ---------------------------------------------------------------------------------------
    def make_proxy_loss(self, num_classes: int, **loss_options: Any) -> None:
        """Attach trainable proxies (``num_classes`` x ``num_features``); 0 classes attaches none."""
        self.proxy_loss = ProxyLoss(num_classes, self.num_features, **loss_options) if num_classes else None

    def loss(
        self,
        features: torch.Tensor,
        targets: torch.Tensor,
        classes: Sequence[int] | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Proxy loss of ``features`` (from this model) against class indices; see ``ProxyLoss``."""
        if self.proxy_loss is None:
            raise RuntimeError(
                f"{type(self).__name__} was built with num_classes=0 and has no proxies; "
                "pass num_classes to create_model to train it"
            )
        return self.proxy_loss(features, targets, classes)

    # -- pretrained -------------------------------------------------------------------------------------
    def init_from_timm(self, state: dict[str, torch.Tensor]) -> None:
        """Initialise from a timm ConvNeXt state dict with this model's first-layer rule."""
        raise NotImplementedError(f"{type(self).__name__} cannot be initialised from a ConvNeXt checkpoint")


def source_for_channels(
    names: Sequence[str], sources: Sequence[str], exact_order: bool = False
) -> tuple[str, list[int]]:
    """The source whose channel set equals ``names`` and the permutation into that source's tile order.

    Returns ``(source_key, perm)`` with ``images[:, perm]`` in the source's order. Raises ``KeyError``
    naming the unseen channel set and the known ones when no source matches (FixedChannels and
    TargetParam only have weights for the channel sets they were built for).
    """
    for key in sources:
        src = SOURCES[key].channels
        if tuple(names) == src or (not exact_order and sorted(names) == sorted(src)):
            return key, [list(names).index(c) for c in src]
    known = "; ".join(f"{k}: {', '.join(SOURCES[k].channels)}" for k in sources)
    raise KeyError(
        f"unseen channel set ({', '.join(names)}): this model has a first layer only for the channel sets "
        f"{known}"
    )
