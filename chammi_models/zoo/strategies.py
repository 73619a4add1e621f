"""The paper's seven channel strategies on a timm ConvNeXt trunk.

Options that reproduce Table 1 (``backbone="convnext_tiny"``, default ``num_classes``; proxies counted):

=================== ===================== ===========================================================
model               params (exact)        how
=================== ===================== ===========================================================
channel_replication 27.82M (27,818,592)   bare trunk, no proxies (never trained)
fixed_channels      83.47M (83,471,136)   three whole ConvNeXts with 3/4/5-input stems + 14 proxies
depthwise           27.84M (27,835,536)   kernels_per_channel=64; per-name patchify, 3x3 banks, channel
                                          weights; 1x1 conv 64->96; stem LayerNorm; 14 proxies
slice_param         27.86M (27,855,361)   8-name bank + per-source offsets (source_offsets=True), 14
                                          proxies, learnable temperature (1 parameter)
target_param        27.84M (27,843,360)   one stem conv (with bias) per source, 14 proxies
template_mixing     28.02M (28,022,272)   num_templates=128, per-name coefficients (8 x 128), 14 proxies
hypernet            28.29M (28,287,232)   z_dim=256, hidden_dim=256, per-name embeddings, 14 proxies
=================== ===================== ===========================================================

14 = 6 WTC + 4 HPA + 4 CP training classes in one label space. FixedChannels holds the 14 proxies once;
pass ``classes=`` (the source's class indices) to ``model.loss`` so each trunk's features only compete with
its own source's proxies, which makes them per-trunk proxies (6 + 4 + 4, same count).

Notes on the derivation: the reference repository's released HyperNet config (z_dim=128, hidden 256) gives
28.25M; Table 1's 28.29M needs z_dim = hidden_dim = 256. SliceParam's 27.86M needs the per-source offsets
(without them: 27.84M). ChannelReplication's 27.82M excludes proxies (with 14: 27.83M). FixedChannels'
83.47M is three trunks (83.46M) plus 14 proxies in total (not 14 per trunk: 83.49M).

Stem convs that replace timm's stem (slice/template/hyper) have no bias, like the reference; the per-source
stems of TargetParam/FixedChannels keep timm's bias. The tests check every count to 0.01M.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

import chammi_models.zoo.first_layers as fl
from chammi_data.format.vocab import SOURCES, VOCAB, to_names
from chammi_models.zoo.base import (
    PAPER_NUM_CLASSES,
    ChannelAdaptiveModel,
    check_vocabulary,
    match_channel_set,
    source_channel_sets,
)
from chammi_models.zoo.registry import Builder, register_model
from chammi_models.zoo.trunk import ConvNeXtTrunk, make_stem_conv


def _sets_for(
    vocab: Sequence[str], sources: Sequence[str] | None, channel_sets: Sequence[Sequence[str]] | None
) -> dict[str, tuple[str, ...]]:
    """The channel sets a per-set model gets a first layer for: ``channel_sets`` (any sets of names from the
    vocabulary, keyed ``set0``, ``set1``, ...) or the CHAMMI sources whose channels the vocabulary covers
    (all three by default); an error if none."""
    if channel_sets is not None:
        if sources is not None:
            raise ValueError("give sources or channel_sets, not both")
        sets = {f"set{i}": to_names(s) for i, s in enumerate(channel_sets)}
        outside = sorted({c for s in sets.values() for c in s} - set(vocab))
        if not sets or any(not s for s in sets.values()) or outside:
            raise ValueError(
                f"channel_sets must be non-empty sets of names from the vocabulary; not in it: {outside}"
            )
        return sets
    keys = tuple(sources) if sources is not None else tuple(SOURCES)
    for k in keys:
        if k not in SOURCES:
            raise KeyError(f"unknown source {k!r}; valid sources: {', '.join(SOURCES)}")
    keys = tuple(k for k in keys if set(SOURCES[k].channels) <= set(vocab))
    if not keys:
        raise ValueError(
            f"no source's channel set fits the vocabulary {tuple(vocab)}; give channel_sets for other sets"
        )
    return source_channel_sets(keys)


class FirstLayerModel(ChannelAdaptiveModel):
    """``first_layer(images, names) -> trunk -> (B, D)``: the shape of every single-trunk strategy."""

    def __init__(self, channels: Sequence[str | int], first_layer: nn.Module, trunk: ConvNeXtTrunk) -> None:
        super().__init__(channels)
        self.first_layer = first_layer
        self.trunk = trunk
        self.num_features = trunk.num_features

    def forward_features(self, images: torch.Tensor, names: tuple[str, ...]) -> torch.Tensor:
        return self.trunk(self.first_layer(images, names))

    def init_from_timm(self, state: dict[str, torch.Tensor]) -> None:
        """Trunk from the checkpoint; the first layer by its rule (see :meth:`_init_first_layer`)."""
        self.trunk.load_timm_state_dict(state)
        with torch.no_grad():
            self._init_first_layer(state["stem.0.weight"], state.get("stem.0.bias"))

    def _init_first_layer(self, rgb: torch.Tensor, bias: torch.Tensor | None) -> None:
        layer = self.first_layer
        if isinstance(layer, fl.PerSourceStem):  # TargetParam: mean padding per source
            for conv in layer.convs.values():
                conv.weight.copy_(fl.pad_rgb_filters(rgb, conv.in_channels))
                if bias is not None:
                    conv.bias.copy_(bias)
        elif isinstance(layer, fl.SliceParamStem):  # every name starts from the RGB-mean filter
            layer.bank.copy_(fl.rgb_mean_filter(rgb).unsqueeze(1).expand_as(layer.bank))
            for off in layer.offsets.values():
                off.zero_()
        elif isinstance(layer, fl.HyperNetStem):
            # generated filters start near the RGB-mean filter, perturbed per name
            layer.init_around(fl.rgb_mean_filter(rgb))
        # TemplateMixing and Depthwise first layers stay random (the paper's "reinit_as_random")


class ChannelReplication(ChannelAdaptiveModel):
    """Each channel copied to R, G and B and run through the RGB trunk separately; features concatenated.

    Output (B, C * num_features) in the input's channel order; ``num_features`` is the per-pass width and
    :meth:`feature_dim` the output width for C channels. Untrained in the paper, so it has no proxies.
    """

    def __init__(self, channels: Sequence[str | int], backbone: str) -> None:
        super().__init__(channels)
        self.trunk = ConvNeXtTrunk(backbone)
        self.stem = make_stem_conv(3, self.trunk)
        self.num_features = self.trunk.num_features

    def feature_dim(self, num_channels: int) -> int:
        return num_channels * self.num_features

    def forward_features(self, images: torch.Tensor, names: tuple[str, ...]) -> torch.Tensor:
        b, c, h, w = images.shape
        grey = images.reshape(b * c, 1, h, w).expand(-1, 3, -1, -1)
        return self.trunk(self.stem(grey)).reshape(b, c * self.num_features)

    def init_from_timm(self, state: dict[str, torch.Tensor]) -> None:
        self.trunk.load_timm_state_dict(state)
        self.stem.load_state_dict({"weight": state["stem.0.weight"], "bias": state["stem.0.bias"]})


class _SourceNet(nn.Module):
    """One whole ConvNeXt with a C-input stem (FixedChannels' per-source model)."""

    def __init__(self, in_chans: int, backbone: str) -> None:
        super().__init__()
        self.trunk = ConvNeXtTrunk(backbone)
        self.stem = make_stem_conv(in_chans, self.trunk)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.trunk(self.stem(images))


class FixedChannels(ChannelAdaptiveModel):
    """One whole model per channel set (by default per CHAMMI source: 3, 4, 5 input channels); the input's
    channel set picks the model.

    A permutation of a set's channels is reordered to its order; any other set raises ``KeyError`` naming
    it. All sub-models have the same feature width, so the proxies are shared (see module doc).
    """

    def __init__(
        self, channels: Sequence[str | int], backbone: str, sets: dict[str, tuple[str, ...]]
    ) -> None:
        super().__init__(channels)
        self.sets = dict(sets)
        self.sources = tuple(sets)
        self.nets = nn.ModuleDict({k: _SourceNet(len(v), backbone) for k, v in self.sets.items()})
        self.num_features = next(iter(self.nets.values())).trunk.num_features

    def forward_features(self, images: torch.Tensor, names: tuple[str, ...]) -> torch.Tensor:
        key, perm = match_channel_set(names, self.sets)
        return self.nets[key](images[:, perm])

    def init_from_timm(self, state: dict[str, torch.Tensor]) -> None:
        for net in self.nets.values():
            net.trunk.load_timm_state_dict(state)
            with torch.no_grad():
                net.stem.weight.copy_(fl.pad_rgb_filters(state["stem.0.weight"], net.stem.in_channels))
                net.stem.bias.copy_(state["stem.0.bias"])


def attach_proxy_head(
    model: ChannelAdaptiveModel, num_classes: int | None, temperature: float, learnable_temperature: bool
) -> ChannelAdaptiveModel:
    """Give ``model`` its trainable proxies (the last step of every registered builder); returns it.

    ``num_classes`` None means the paper's 14 classes over the three sources; 0 attaches no proxies.
    """
    n = PAPER_NUM_CLASSES if num_classes is None else int(num_classes)
    if n < 0:
        raise ValueError(f"num_classes must be >= 0, got {n}")
    model.make_proxy_loss(n, temperature=temperature, learnable_temperature=learnable_temperature)
    return model


def first_layer_model(
    channels: Sequence[str | int],
    backbone: str,
    num_classes: int | None,
    temperature: float,
    learnable_temperature: bool,
    make_stem: Callable[[tuple[str, ...], ConvNeXtTrunk], nn.Module],
) -> ChannelAdaptiveModel:
    """A single-trunk model: the first layer ``make_stem(vocab, trunk)`` in front of a new ConvNeXt trunk of
    ``backbone``, with its proxies attached."""
    vocab = check_vocabulary(channels)
    trunk = ConvNeXtTrunk(backbone)
    model = FirstLayerModel(vocab, make_stem(vocab, trunk), trunk)
    return attach_proxy_head(model, num_classes, temperature, learnable_temperature)


#: ``stem(vocab, trunk, **options) -> first layer``; its keyword-only parameters are the model's options.
StemFactory = Callable[..., nn.Module]


def register_first_layer_model(
    name: str, temperature: float, learnable_temperature: bool = False
) -> Callable[[StemFactory], Builder]:
    """Decorator: register a single-trunk strategy under ``name`` from its first-layer factory.

    The decorated ``stem(vocab, trunk, *, <options>)`` builds the first layer. The registered builder takes
    ``(channels=VOCAB, num_classes=None, backbone="convnext_tiny", *, temperature, learnable_temperature,
    **options)`` with the two temperature defaults given here; the stem's keyword-only parameters, with
    their defaults, are the model's options (``registry.model_options`` reads them through ``options_from``).
    Returns the builder, so the module-level name is the builder as for every registered model.
    """

    def wrap(stem: StemFactory) -> Builder:
        default_temperature, default_learnable = temperature, learnable_temperature

        def builder(
            channels: Sequence[str | int] = VOCAB,
            num_classes: int | None = None,
            backbone: str = "convnext_tiny",
            *,
            temperature: float = default_temperature,
            learnable_temperature: bool = default_learnable,
            **options: Any,
        ) -> ChannelAdaptiveModel:
            return first_layer_model(
                channels,
                backbone,
                num_classes,
                temperature,
                learnable_temperature,
                lambda vocab, trunk: stem(vocab, trunk, **options),
            )

        builder.__name__ = builder.__qualname__ = stem.__name__
        builder.__doc__ = stem.__doc__
        builder.options_from = stem  # type: ignore[attr-defined]
        return register_model(name)(builder)

    return wrap


# -- registered entry points: only sizes and options, like timm's ----------------------------------------
@register_model("channel_replication")
def channel_replication(
    channels: Sequence[str | int] = VOCAB, num_classes: int | None = None, backbone: str = "convnext_tiny"
) -> ChannelAdaptiveModel:
    if num_classes:
        raise ValueError(
            "channel_replication is a frozen feature extractor (its width depends on C); "
            "it takes no proxies: use num_classes=0 or None"
        )
    return ChannelReplication(channels, backbone)


@register_model("fixed_channels")
def fixed_channels(
    channels: Sequence[str | int] = VOCAB,
    num_classes: int | None = None,
    backbone: str = "convnext_tiny",
    *,
    sources: Sequence[str] | None = None,
    channel_sets: Sequence[Sequence[str]] | None = None,
    temperature: float = 0.07,
    learnable_temperature: bool = False,
) -> ChannelAdaptiveModel:
    vocab = check_vocabulary(channels)
    model = FixedChannels(vocab, backbone, _sets_for(vocab, sources, channel_sets))
    return attach_proxy_head(model, num_classes, temperature, learnable_temperature)


@register_first_layer_model("target_param", temperature=0.07)
def target_param(
    vocab: tuple[str, ...],
    trunk: ConvNeXtTrunk,
    *,
    sources: Sequence[str] | None = None,
    channel_sets: Sequence[Sequence[str]] | None = None,
) -> nn.Module:
    return fl.PerSourceStem(_sets_for(vocab, sources, channel_sets), trunk.stem_dim, trunk.patch_size)


@register_first_layer_model("slice_param", temperature=0.15, learnable_temperature=True)
def slice_param(vocab: tuple[str, ...], trunk: ConvNeXtTrunk, *, source_offsets: bool = True) -> nn.Module:
    return fl.SliceParamStem(vocab, trunk.stem_dim, trunk.patch_size, source_offsets=source_offsets)


@register_first_layer_model("template_mixing", temperature=0.05)
def template_mixing(vocab: tuple[str, ...], trunk: ConvNeXtTrunk, *, num_templates: int = 128) -> nn.Module:
    return fl.TemplateMixingStem(vocab, trunk.stem_dim, trunk.patch_size, num_templates)


@register_first_layer_model("hypernet", temperature=0.07)
def hypernet(
    vocab: tuple[str, ...], trunk: ConvNeXtTrunk, *, z_dim: int = 256, hidden_dim: int = 256
) -> nn.Module:
    return fl.HyperNetStem(vocab, trunk.stem_dim, trunk.patch_size, z_dim, hidden_dim)


@register_first_layer_model("depthwise", temperature=0.07)
def depthwise(vocab: tuple[str, ...], trunk: ConvNeXtTrunk, *, kernels_per_channel: int = 64) -> nn.Module:
    return fl.DepthwiseStem(vocab, trunk.stem_dim, trunk.patch_size, kernels_per_channel)
