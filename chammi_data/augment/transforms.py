"""Sample transforms for (C, H, W) float images of any channel count (the paper's recipe).

Every transform takes a sample dict (``image``, ``channels``, ``source``, ``label``, ``cell_id``, ``meta``)
and returns a new sample dict; the input dict is not modified. Random transforms take an optional ``generator:
torch.Generator``: the stream passes one seeded from (seed, epoch, global sample index), so an augmentation
depends on that triple only, not on the number of workers or ranks. Without a generator they use torch's
global RNG.

- :func:`train_transform`: [TPS with probability ``tps_p``] -> RandomResizedCrop -> horizontal flip ->
  per-source, per-channel normalisation.
- :func:`eval_transform`: resize the shorter side to ``size`` -> centre crop -> normalisation.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from chammi_data.augment.tps import ThinPlateSpline
from chammi_data.format.release_format import to_float_tensor
from chammi_data.format.vocab import normalisation_stats, to_names

Sample = dict[str, Any]
#: ``Normalize(stats=PER_SAMPLE)``: each channel of a sample by its own mean and std.
PER_SAMPLE = "per_sample"

__all__ = [
    "CenterCrop",
    "ChannelSubset",
    "Compose",
    "Normalize",
    "RandomHorizontalFlip",
    "RandomResizedCrop",
    "ResizeShorter",
    "ThinPlateSpline",
    "accepts_generator",
    "apply_seeded",
    "eval_transform",
    "train_transform",
]


def _image(sample: Sample, op: str) -> torch.Tensor:
    """The sample's image as a float (C, H, W) tensor; uint8/uint16 arrays are scaled to [0, 1]."""
    img = sample.get("image")
    if isinstance(img, np.ndarray) or (isinstance(img, torch.Tensor) and not img.is_floating_point()):
        img = to_float_tensor(img)
    if not isinstance(img, torch.Tensor) or img.ndim != 3:
        raise ValueError(
            f"{op}: sample {sample.get('cell_id')!r}: image must be (C, H, W), got "
            f"{getattr(img, 'shape', type(img))}"
        )
    return img if img.is_floating_point() else img.float()


def _with_image(sample: Sample, image: torch.Tensor, **changes: Any) -> Sample:
    out = dict(sample)
    out["image"] = image
    out.update(changes)
    return out


def _resize(img: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (C, H, W) with antialiasing when shrinking (matches torchvision's tensor
    default)."""
    if tuple(img.shape[-2:]) == hw:
        return img
    return F.interpolate(img[None], size=hw, mode="bilinear", align_corners=False, antialias=True)[0]


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def accepts_generator(fn: Callable[..., Any]) -> bool:
    """True when ``fn`` can be called as ``fn(sample, generator=g)`` (a keyword ``generator`` or
    ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature
        return False
    return any(p.name == "generator" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


class Compose:
    """Apply transforms in order, passing the same generator to each one that accepts it."""

    def __init__(self, transforms: Sequence[Callable[..., Sample]]) -> None:
        self.transforms = list(transforms)
        self._takes_generator = [accepts_generator(t) for t in self.transforms]

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        for t, takes in zip(self.transforms, self._takes_generator, strict=True):
            sample = t(sample, generator=generator) if takes else t(sample)
        return sample

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(t) for t in self.transforms)
        return f"Compose([\n  {inner}\n])"


class ChannelSubset:
    """Keep the named channels, in the given order (``names`` from the vocabulary or its indices).

    A sample lacking one of them raises ``KeyError`` naming the sample and its channels, unless
    ``missing="skip"``, which keeps only the channels the sample has (at least one).
    """

    def __init__(self, names: Sequence[str | int], missing: str = "error") -> None:
        if missing not in ("error", "skip"):
            raise ValueError(f"missing must be 'error' or 'skip', got {missing!r}")
        self.names = to_names(names)
        self.missing = missing

    def __call__(self, sample: Sample) -> Sample:
        have = tuple(sample["channels"])
        wanted = [c for c in self.names if c in have]
        if len(wanted) < len(self.names) and (self.missing == "error" or not wanted):
            lacking = [c for c in self.names if c not in have]
            raise KeyError(
                f"sample {sample.get('cell_id')!r} ({sample.get('source')}) has channels {list(have)}; "
                f"missing {lacking}"
            )
        img = _image(sample, "ChannelSubset")
        index = torch.tensor([have.index(c) for c in wanted], dtype=torch.long, device=img.device)
        return _with_image(sample, img.index_select(0, index), channels=tuple(wanted))

    def __repr__(self) -> str:
        return f"ChannelSubset({list(self.names)}, missing={self.missing!r})"


class Normalize:
    """(x - mean) / std per channel, with stats looked up by (source, channel name).

    Default stats: the training-split stats of ``vocab.normalisation_stats``. ``stats`` overrides them as
    ``{source: {channel: (mean, std)}}`` (e.g. stats stored in a model card), or is ``"per_sample"``: each
    channel of each sample by its own mean and std (std floored at 1/255), the normalisation of CHAMMI-75,
    whose 75 studies share no statistics. Works after channel subsetting or reordering because the lookup is
    by name.
    """

    def __init__(self, stats: Mapping[str, Mapping[str, tuple[float, float]]] | str | None = None) -> None:
        if isinstance(stats, str) and stats != PER_SAMPLE:
            raise ValueError(f"Normalize: stats must be a table, None or {PER_SAMPLE!r}, got {stats!r}")
        self.per_sample = stats == PER_SAMPLE
        self.stats = None if stats is None or self.per_sample else {s: dict(v) for s, v in stats.items()}  # type: ignore[union-attr]

    def _lookup(self, source: str, channels: tuple[str, ...]) -> tuple[list[float], list[float]]:
        if self.stats is None:
            return normalisation_stats(source, channels)
        table = self.stats.get(source)
        if table is None or any(c not in table for c in channels):
            raise KeyError(
                f"Normalize: no stats for source {source!r} channels {list(channels)}; have {self.stats}"
            )
        return [table[c][0] for c in channels], [table[c][1] for c in channels]

    def __call__(self, sample: Sample) -> Sample:
        img = _image(sample, "Normalize")
        if self.per_sample:
            flat = img.reshape(img.shape[0], -1)
            m = flat.mean(dim=1).view(-1, 1, 1)
            s = flat.std(dim=1, unbiased=False).clamp_min(1 / 255).view(-1, 1, 1)
            return _with_image(sample, (img - m) / s)
        try:
            mean, std = self._lookup(sample["source"], tuple(sample["channels"]))
        except KeyError as exc:
            raise KeyError(f"Normalize: sample {sample.get('cell_id')!r}: {exc.args[0]}") from None
        m = torch.tensor(mean, dtype=img.dtype, device=img.device).view(-1, 1, 1)
        s = torch.tensor(std, dtype=img.dtype, device=img.device).view(-1, 1, 1)
        return _with_image(sample, (img - m) / s)

    def __repr__(self) -> str:
        if self.per_sample:
            return "Normalize('per_sample')"
        return "Normalize(vocab stats)" if self.stats is None else f"Normalize({self.stats})"


class RandomResizedCrop:
    """Crop a random area fraction in ``scale`` with aspect ratio (w/h) in ``ratio``, resize to ``size``.

    Same sampling as torchvision (10 tries, then a centre crop with the ratio clamped), but drawing from the
    given generator.
    """

    def __init__(self, size: int | Sequence[int] = 224, scale=(0.8, 1.0), ratio=(0.9, 1.1)) -> None:
        if not (0 < scale[0] <= scale[1] <= 1.0) or not (0 < ratio[0] <= ratio[1]):
            raise ValueError(f"invalid RandomResizedCrop scale {scale} or ratio {ratio}")
        self.size = _pair(size)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))

    def params(
        self, height: int, width: int, generator: torch.Generator | None = None
    ) -> tuple[int, int, int, int]:
        """(top, left, h, w) of the crop box in pixels."""
        area = height * width
        log_r = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            u = torch.rand(2, generator=generator, dtype=torch.float64).tolist()
            target = area * (self.scale[0] + u[0] * (self.scale[1] - self.scale[0]))
            aspect = math.exp(log_r[0] + u[1] * (log_r[1] - log_r[0]))
            w = round(math.sqrt(target * aspect))
            h = round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (), generator=generator))
                left = int(torch.randint(0, width - w + 1, (), generator=generator))
                return top, left, h, w
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, round(width / self.ratio[0])
        elif in_ratio > self.ratio[1]:
            h, w = height, round(height * self.ratio[1])
        else:
            h, w = height, width
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        img = _image(sample, "RandomResizedCrop")
        top, left, h, w = self.params(img.shape[1], img.shape[2], generator)
        return _with_image(sample, _resize(img[:, top : top + h, left : left + w], self.size))

    def __repr__(self) -> str:
        return f"RandomResizedCrop(size={self.size}, scale={self.scale}, ratio={self.ratio})"


class RandomHorizontalFlip:
    """Flip left-right with probability ``p`` (all channels together)."""

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"probability p must be in [0, 1], got {p}")
        self.p = p

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        if self.p <= 0.0 or torch.rand((), generator=generator).item() >= self.p:
            return sample
        return _with_image(sample, _image(sample, "RandomHorizontalFlip").flip(-1))

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class ResizeShorter:
    """Resize so the shorter side is ``size`` pixels, keeping the aspect ratio (longer side rounded)."""

    def __init__(self, size: int = 224) -> None:
        self.size = int(size)

    def __call__(self, sample: Sample) -> Sample:
        img = _image(sample, "ResizeShorter")
        h, w = img.shape[1:]
        if h <= w:
            hw = (self.size, max(1, round(w * self.size / h)))
        else:
            hw = (max(1, round(h * self.size / w)), self.size)
        return _with_image(sample, _resize(img, hw))

    def __repr__(self) -> str:
        return f"ResizeShorter({self.size})"


class CenterCrop:
    """Crop the central ``size`` box; an image smaller than the box is zero-padded symmetrically first."""

    def __init__(self, size: int | Sequence[int] = 224) -> None:
        self.size = _pair(size)

    def __call__(self, sample: Sample) -> Sample:
        img = _image(sample, "CenterCrop")
        th, tw = self.size
        h, w = img.shape[1:]
        if h < th or w < tw:
            ph, pw = max(th - h, 0), max(tw - w, 0)
            img = F.pad(img, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
            h, w = img.shape[1:]
        top, left = (h - th) // 2, (w - tw) // 2
        return _with_image(sample, img[:, top : top + th, left : left + tw])

    def __repr__(self) -> str:
        return f"CenterCrop({self.size})"


def train_transform(
    size: int = 224,
    scale: tuple[float, float] = (0.8, 1.0),
    ratio: tuple[float, float] = (0.9, 1.1),
    hflip: float = 0.5,
    tps_p: float = 0.0,
    normalize: bool = True,
    channels: Sequence[str] | None = None,
    stats: Mapping[str, Mapping[str, tuple[float, float]]] | str | None = None,
) -> Compose:
    """The paper's training augmentation; ``tps_p`` > 0 adds the TPS warp before cropping.

    ``channels`` (optional) subsets/reorders channels first; ``stats`` goes to :class:`Normalize`
    (``"per_sample"`` for CHAMMI-75). Output image: (C, size, size) float.
    """
    steps: list[Callable[..., Sample]] = []
    if channels is not None:
        steps.append(ChannelSubset(channels))
    if tps_p > 0:
        steps.append(ThinPlateSpline(p=tps_p))
    steps.append(RandomResizedCrop(size, scale, ratio))
    if hflip > 0:
        steps.append(RandomHorizontalFlip(hflip))
    if normalize:
        steps.append(Normalize(stats))
    return Compose(steps)


def eval_transform(size: int = 224, normalize: bool = True, channels: Sequence[str] | None = None) -> Compose:
    """The paper's evaluation transform: shorter side to ``size``, centre crop ``size`` x ``size``,
    normalise."""
    steps: list[Callable[..., Sample]] = []
    if channels is not None:
        steps.append(ChannelSubset(channels))
    steps += [ResizeShorter(size), CenterCrop(size)]
    if normalize:
        steps.append(Normalize())
    return Compose(steps)


def apply_seeded(
    transform: Callable[..., dict[str, Any]] | None,
    sample: dict[str, Any],
    seed: int,
    takes_generator: bool | None = None,
) -> dict[str, Any]:
    """``transform(sample)`` with its randomness from ``seed``: through a ``generator=`` argument when it
    takes one, else under a forked torch RNG seeded with it. The stream and the device transform both use
    this."""
    if transform is None:
        return sample
    if takes_generator is None:
        takes_generator = accepts_generator(transform)
    if takes_generator:
        g = torch.Generator()
        g.manual_seed(seed)
        return transform(sample, generator=g)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return transform(sample)
