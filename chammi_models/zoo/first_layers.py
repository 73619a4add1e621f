"""Interchangeable first layers: ``first_layer(images (B, C, H, W), names) -> (B, K, H/p, W/p)``.

K is the trunk's stem width (96 for convnext_tiny) and p its patch size (4). The output feeds
:class:`chammi_models.zoo.trunk.ConvNeXtTrunk`, which applies the stem LayerNorm next. ``names`` are channel
names already validated against the model vocabulary ``vocab`` each layer was built with.

Layers (one per first-layer strategy of the paper):
    PerSourceStem       one stem conv per source channel set (TargetParam)
    SliceParamStem      a per-name bank of single-channel filters, sliced by the input's names
    TemplateMixingStem  per-name learned mixtures of T shared templates
    HyperNetStem        per-name embedding -> MLP -> that channel's filters
    DepthwiseStem       per-channel patchify + per-name depthwise 3x3 filter banks + softmax-weighted
                        channel sum + 1x1 conv to K

The helpers at the bottom implement the pretrained first-layer rules used by ``init_from_timm``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from chammi_data.format.vocab import SOURCES
from chammi_models.zoo.base import match_channel_set, source_for_channels


def _positions(vocab: Sequence[str], names: Sequence[str]) -> list[int]:
    return [vocab.index(n) for n in names]


class PerSourceStem(nn.Module):
    """One patchify conv (C_s -> K, with bias) per channel set; the input's channel set picks the conv.

    ``sets``: {key: channel names}, by default each CHAMMI source's channels (``base.source_channel_sets``),
    or any channel sets drawn from the registry (e.g. CHAMMI-75 studies). An input whose names are a
    permutation of a set is reordered to that set's order; any other set raises ``KeyError`` naming it.
    """

    def __init__(self, sets: Mapping[str, Sequence[str]], stem_dim: int, patch: int) -> None:
        super().__init__()
        self.sets = {k: tuple(v) for k, v in sets.items()}
        self.sources = tuple(self.sets)
        self.convs = nn.ModuleDict(
            {k: nn.Conv2d(len(v), stem_dim, patch, stride=patch) for k, v in self.sets.items()}
        )

    def forward(self, images: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
        key, perm = match_channel_set(names, self.sets)
        return self.convs[key](images[:, perm])


class SliceParamStem(nn.Module):
    """A bank (K, V, p, p) of single-channel filters, one slice per vocabulary name.

    The input's stem is the bank sliced by its names, so the convolution sums the channel responses.
    ``source_offsets`` adds the paper's per-source filter offsets (``slice_class_emb``: one extra
    (K, C_s, p, p) slice per source channel, initialised to zero) when the input's channel set is exactly
    a source's; other channel sets use the bank alone, so any subset of names in any order still works.
    """

    def __init__(
        self,
        vocab: Sequence[str],
        stem_dim: int,
        patch: int,
        source_offsets: bool = True,
        sources: Sequence[str] = tuple(SOURCES),
    ) -> None:
        super().__init__()
        self.vocab = tuple(vocab)
        self.patch = patch
        self.bank = nn.Parameter(torch.empty(stem_dim, len(self.vocab), patch, patch))
        nn.init.kaiming_normal_(self.bank, mode="fan_in", nonlinearity="relu")
        usable = [s for s in sources if set(SOURCES[s].channels) <= set(self.vocab)]
        self.offsets = nn.ParameterDict(
            {s: nn.Parameter(torch.zeros(stem_dim, len(SOURCES[s].channels), patch, patch)) for s in usable}
            if source_offsets
            else {}
        )

    def weight(self, names: Sequence[str]) -> torch.Tensor:
        """(K, C, p, p) stem filters for ``names``."""
        w = self.bank[:, _positions(self.vocab, names)]
        if len(self.offsets):
            try:
                key, _ = source_for_channels(names, list(self.offsets))
            except KeyError:
                return w
            src = SOURCES[key].channels
            w = w + self.offsets[key][:, [src.index(n) for n in names]]
        return w

    def forward(self, images: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
        return F.conv2d(images, self.weight(names), stride=self.patch)


class TemplateMixingStem(nn.Module):
    """T shared templates (K, T, p, p); channel c's filter = sum_t coef[c, t] * template_t.

    Coefficients are per vocabulary name (V, T) with orthogonal init, so any subset of names works.
    """

    def __init__(self, vocab: Sequence[str], stem_dim: int, patch: int, num_templates: int = 128) -> None:
        super().__init__()
        self.vocab = tuple(vocab)
        self.patch = patch
        self.templates = nn.Parameter(torch.empty(stem_dim, num_templates, patch, patch))
        nn.init.kaiming_normal_(self.templates, mode="fan_in", nonlinearity="relu")
        self.coefs = nn.Parameter(torch.empty(len(self.vocab), num_templates))
        nn.init.orthogonal_(self.coefs)

    def weight(self, names: Sequence[str]) -> torch.Tensor:
        """(K, C, p, p) stem filters for ``names``."""
        coefs = self.coefs[_positions(self.vocab, names)]
        return torch.einsum("ct,kthw->kchw", coefs, self.templates)

    def forward(self, images: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
        return F.conv2d(images, self.weight(names), stride=self.patch)


class HyperNetStem(nn.Module):
    """Per-name embedding (V, z) -> Linear(z, hidden) -> GELU -> Linear(hidden, K*p*p) = that channel's
    filters.

    The reference stacks two linear maps without a nonlinearity (a single linear map in disguise); the
    GELU makes the hypernetwork an MLP at no parameter cost.
    """

    def __init__(
        self, vocab: Sequence[str], stem_dim: int, patch: int, z_dim: int = 256, hidden_dim: int = 256
    ) -> None:
        super().__init__()
        self.vocab = tuple(vocab)
        self.patch = patch
        self.stem_dim = stem_dim
        self.embedding = nn.Parameter(torch.randn(len(self.vocab), z_dim))
        self.hidden = nn.Linear(z_dim, hidden_dim)
        self.out = nn.Linear(hidden_dim, stem_dim * patch * patch)

    def weight(self, names: Sequence[str]) -> torch.Tensor:
        """(K, C, p, p) stem filters generated for ``names``."""
        z = self.embedding[_positions(self.vocab, names)]
        k = self.out(F.gelu(self.hidden(z)))  # (C, K*p*p)
        return k.view(len(names), self.stem_dim, self.patch, self.patch).transpose(0, 1)

    def forward(self, images: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
        return F.conv2d(images, self.weight(names), stride=self.patch)

    @torch.no_grad()
    def init_around(self, filt: torch.Tensor, spread: float = 0.1) -> None:
        """Make every generated filter start near ``filt`` (K, p, p): it becomes the output bias, and the
        output weights are rescaled so the per-name deviations have ``spread`` x the filter's std."""
        self.out.bias.copy_(filt.reshape(-1))
        deviation = self.out(F.gelu(self.hidden(self.embedding))) - self.out.bias
        self.out.weight.mul_(spread * filt.std() / deviation.std().clamp_min(1e-12))


class DepthwiseStem(nn.Module):
    """Depthwise first layer: every channel is filtered on its own, then the channels are mixed.

    Per channel: a per-name p x p patchify filter (with bias) -> a per-name bank of ``kernels_per_channel``
    depthwise 3x3 filters -> (B, C, Kc, h, w); channels are merged by a softmax over per-name weights of
    the input's channels; a 1x1 conv (no bias) maps Kc -> K. Normalisation is the trunk's stem LayerNorm
    (where the reference used an affine InstanceNorm of the same size), which pretrained stage 0 expects.
    """

    def __init__(
        self, vocab: Sequence[str], stem_dim: int, patch: int, kernels_per_channel: int = 64
    ) -> None:
        super().__init__()
        self.vocab = tuple(vocab)
        self.patch = patch
        self.kc = kernels_per_channel
        v = len(self.vocab)
        self.patch_weight = nn.Parameter(torch.empty(v, 1, patch, patch))
        self.patch_bias = nn.Parameter(torch.zeros(v))
        nn.init.kaiming_normal_(self.patch_weight, mode="fan_in", nonlinearity="linear")
        self.bank = nn.Parameter(torch.empty(v * kernels_per_channel, 1, 3, 3))
        nn.init.kaiming_normal_(self.bank, mode="fan_in", nonlinearity="relu")
        self.channel_logits = nn.Parameter(torch.randn(v))
        self.mix = nn.Conv2d(kernels_per_channel, stem_dim, kernel_size=1, bias=False)

    def forward(self, images: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
        pos = _positions(self.vocab, names)
        c = len(pos)
        x = F.conv2d(images, self.patch_weight[pos], self.patch_bias[pos], stride=self.patch, groups=c)
        bank = self.bank.view(len(self.vocab), self.kc, 1, 3, 3)[pos].reshape(c * self.kc, 1, 3, 3)
        x = F.conv2d(x, bank, padding=1, groups=c)  # each channel -> its own kc filters
        x = x.view(x.shape[0], c, self.kc, *x.shape[-2:])
        weights = torch.softmax(self.channel_logits[pos], dim=0).view(1, c, 1, 1, 1)
        return self.mix((x * weights).sum(dim=1))


# -- pretrained first-layer rules ------------------------------------------------------------------------
def pad_rgb_filters(rgb: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Stem filters for ``in_chans`` inputs from pretrained RGB filters (K, 3, p, p) (paper's mean padding).

    The first min(3, in_chans) inputs keep the R, G, B filters. The n = in_chans - 3 extra inputs are
    filled with means of neighbouring RGB filters over a sliding window of width max(1, 4 - n): one extra
    input gets mean(R, G, B); two get mean(R, G) and mean(G, B); windows wrap around for more.
    """
    k, three = rgb.shape[:2]
    if three != 3:
        raise ValueError(f"expected RGB stem filters (K, 3, p, p), got {tuple(rgb.shape)}")
    if in_chans <= 3:
        return rgb[:, :in_chans].clone()
    extra = in_chans - 3
    width = max(1, 4 - extra)
    fills = [rgb[:, [(i + j) % 3 for j in range(width)]].mean(dim=1) for i in range(extra)]
    return torch.cat([rgb, torch.stack(fills, dim=1)], dim=1)


def rgb_mean_filter(rgb: torch.Tensor) -> torch.Tensor:
    """(K, 3, p, p) -> (K, p, p): the mean RGB filter.

    A filter bank where every channel gets this filter answers an image of C identical channels exactly as
    the pretrained RGB stem answers that grey image when C = 3.
    """
    return rgb.mean(dim=1)
