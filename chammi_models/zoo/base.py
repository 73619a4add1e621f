"""The calling convention every model of the zoo shares.

``model(images, channels) -> features``:
    images   float tensor (B, C, H, W), normalised per channel by the data pipeline;
    channels C channel names from the registry ``chammi_data.format.vocab.CHANNELS`` (or their indices),
             naming the input's channels in order. The model never infers channel identity from a source name.
    features (B, model.num_features) float.

A model also carries
    ``model.channels``      the vocabulary it knows (names it has weights for; the ``channels`` argument
                            of ``create_model``: CHAMMI's 8 names by default, ``"chammi75"``, ``"all"``, a
                            list),
    ``model.channel_translation``  None, or a direction of ``vocab.translate_channels``
                            (``chammi->chammi75``, ``chammi75->chammi``): the opt-in by which a model trained
                            on one benchmark's names embeds the other's images (inputs are renamed first),
    ``model.num_features``  D,
    ``model.proxy_loss``    a :class:`chammi_models.zoo.losses.ProxyLoss` (trainable proxies) or None,
    ``model.model_config``  the ``create_model`` arguments that rebuild it (saved in weight cards).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from chammi_data.format.vocab import SOURCES, VOCAB, to_names, translate_channels, vocabulary
from chammi_models.zoo.losses import ProxyLoss

#: The paper's training classes: WTC 6 cell-cycle stages, HPA 4 localisations, CP 3 compounds + DMSO.
PAPER_CLASSES: dict[str, int] = {"wtc11": 6, "hpa": 4, "cp": 4}
#: One label space over all three sources (what Table 1's single-model counts include): 14 proxies.
PAPER_NUM_CLASSES: int = sum(PAPER_CLASSES.values())


def check_vocabulary(channels: str | Sequence[str | int]) -> tuple[str, ...]:
    """Normalise a model vocabulary (a named one such as ``"chammi75"``, or registry names or indices) to
    names; at least one channel."""
    names = vocabulary(channels)
    if not names:
        raise ValueError("a model needs at least one channel in its vocabulary")
    return names


class ChannelAdaptiveModel(nn.Module):
    """Base class: checks the input against its channel names, then calls :meth:`forward_features`.

    Subclasses set ``self.num_features`` and implement ``forward_features(images, names)``.
    """

    num_features: int

    def __init__(self, channels: str | Sequence[str | int] = VOCAB) -> None:
        super().__init__()
        self.channels: tuple[str, ...] = check_vocabulary(channels)
        self.proxy_loss: ProxyLoss | None = None
        self.model_config: dict[str, Any] = {}
        self.channel_translation: str | None = None

    def translate_inputs(self, direction: str | None) -> ChannelAdaptiveModel:
        """Opt in (or out, with None) to renaming input channels before they meet the model's weights:
        ``chammi->chammi75`` lets a model trained on CHAMMI-75's names embed CHAMMI's images (``mito`` ->
        ``mitochondria``, CP's ``golgi`` -> ``agp``), ``chammi75->chammi`` the reverse (see
        ``chammi_data.format.vocab``). Returns the model."""
        if direction is not None:
            translate_channels((), direction)  # an unknown direction fails here, not at the first batch
        self.channel_translation = direction
        return self

    # -- channel handling -------------------------------------------------------------------------------
    def channel_names(self, images: torch.Tensor, channels: Sequence[str | int]) -> tuple[str, ...]:
        """Validate ``channels`` for ``images`` and return them as names.

        Raises ``ValueError`` when the count differs from the image's channel axis and ``KeyError`` for a
        name outside this model's vocabulary.
        """
        if isinstance(channels, str):
            raise TypeError(f"channels must be a sequence of names, not the single string {channels!r}")
        names = to_names(channels)
        if self.channel_translation is not None:
            names = translate_channels(names, self.channel_translation)
        if images.ndim != 4:
            raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
        if images.shape[1] != len(names):
            raise ValueError(
                f"images have {images.shape[1]} channels but {len(names)} channel names were given: {names}"
            )
        unknown = [n for n in names if n not in self.channels]
        if unknown:
            hint = (
                ""
                if self.channel_translation
                else " (a model trained on the other benchmark's names: opt in with model.translate_inputs)"
            )
            raise KeyError(f"channels {unknown} are not in this model's vocabulary {self.channels}{hint}")
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


def source_channel_sets(sources: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """{source key: its channels in tile order} for CHAMMI sources (the default channel sets of FixedChannels
    and TargetParam)."""
    return {k: SOURCES[k].channels for k in sources}


def match_channel_set(
    names: Sequence[str], sets: Mapping[str, Sequence[str]], exact_order: bool = False
) -> tuple[str, list[int]]:
    """The key of the channel set in ``sets`` equal to ``names`` and the permutation into that set's order.

    Returns ``(key, perm)`` with ``images[:, perm]`` in the set's order (a permutation of a set matches
    unless ``exact_order``). Raises ``KeyError`` naming the unseen channel set and the known ones when none
    matches (FixedChannels and TargetParam only have weights for the channel sets they were built for).
    """
    for key, chans in sets.items():
        chans = tuple(chans)
        if tuple(names) == chans or (not exact_order and sorted(names) == sorted(chans)):
            return key, [list(names).index(c) for c in chans]
    known = "; ".join(f"{k}: {', '.join(v)}" for k, v in sets.items())
    raise KeyError(
        f"unseen channel set ({', '.join(names)}): this model has a first layer only for the channel sets "
        f"{known}"
    )


def source_for_channels(
    names: Sequence[str], sources: Sequence[str], exact_order: bool = False
) -> tuple[str, list[int]]:
    """:func:`match_channel_set` over CHAMMI sources: the source whose channel set equals ``names`` and the
    permutation into that source's tile order."""
    return match_channel_set(names, source_channel_sets(sources), exact_order)
