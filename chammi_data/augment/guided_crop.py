"""Guided crops of whole CHAMMI-75 images: a study-sized square around a seeded random cell, in uint8.

CHAMMI-75 stores whole images (``chammi-build --source chammi75``); training cuts a crop around one of the
image's cells in the stream's workers (``stream(guided_crop=GuidedCrop(size))``), so a batch stacks per
channel set and the device does the rest (random resized crop, flip, normalisation) as for CHAMMI:

1. the study's crop size comes from the crop table (``manifests/chammi75_crops.yaml``: ``crop`` pixels of the
   image rescaled so that its long side is ``long_side``; each value says where it comes from); in the
   image's own pixels the side is ``crop * max(H, W) / long_side``, jittered uniformly by +-``jitter``
   (10%), at least 1 and at most ``min(H, W)``;
2. the centre is a cell picked uniformly from the image's centroids (an image without cells: a uniformly
   random point); the square is clamped inside the image (shifted, never padded);
3. a study without a crop size (``crop: null``) is used whole: the largest square at a random offset along
   the long side (the whole image when it is square), which keeps the pixel aspect;
4. the square is resized to ``size`` x ``size`` with Pillow's bilinear filter (antialiased when shrinking),
   uint8 in, uint8 out, channel by channel.

Everything random comes from ``np.random.Generator(PCG64(SeedSequence([seed, ...])))`` with the seed the
stream derives from (seed, epoch, position): the same crop for the same sample of the same epoch, another
one in the next epoch, whatever the ranks and workers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

#: The crop table's file in ``manifests/``.
CROP_TABLE = "chammi75_crops.yaml"


@dataclass(frozen=True)
class CropSize:
    """One study's crop: ``crop`` pixels at ``long_side`` (None: the image is used whole) and its source."""

    crop: int | None
    long_side: int | None
    source: str = ""

    def side(self, height: int, width: int) -> float | None:
        """The crop's side in the image's own pixels (before jitter); None for a whole image."""
        if self.crop is None or self.long_side is None:
            return None
        return self.crop * max(height, width) / self.long_side


@dataclass(frozen=True)
class CropTable:
    """Per-study crop sizes, the default for other studies and the jitter (a fraction of the side)."""

    studies: dict[str, CropSize] = field(default_factory=dict)
    default: CropSize = CropSize(None, None, "used whole")
    jitter: float = 0.1

    def for_study(self, study: str) -> CropSize:
        return self.studies.get(study, self.default)


def _size(entry: Any, where: str) -> CropSize:
    if not isinstance(entry, Mapping) or not isinstance(entry.get("source"), str):
        raise ValueError(f"{where}: expected {{crop, long_side, source}}, got {entry!r}")
    crop, long_side = entry.get("crop"), entry.get("long_side")
    if (crop is None) != (long_side is None) or any(
        v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1) for v in (crop, long_side)
    ):
        raise ValueError(f"{where}: crop and long_side must both be positive integers or both null")
    return CropSize(crop, long_side, entry["source"])


def load_crop_table(path: str | Path | None = None) -> CropTable:
    """The crop table (default: ``manifests/chammi75_crops.yaml``), checked; ``ValueError`` names the
    entry."""
    if path is None:
        from chammi_data.store.paths import manifests_dir

        path = manifests_dir() / CROP_TABLE
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    jitter = data.get("jitter", 0.1)
    if isinstance(jitter, bool) or not isinstance(jitter, int | float) or not 0 <= jitter < 1:
        raise ValueError(f"{path}: jitter must be a fraction in [0, 1), got {jitter!r}")
    studies = {str(k): _size(v, f"{path}: study {k}") for k, v in (data.get("studies") or {}).items()}
    default = _size(data.get("default", {"crop": None, "long_side": None, "source": ""}), f"{path}: default")
    return CropTable(studies, default, float(jitter))


def _rng(seed: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), 0x6372])))


def fit_side(side: float, height: int, width: int) -> int:
    """A crop's side in pixels: ``side`` rounded, at least 1 and at most the image's short side."""
    return max(1, min(int(round(side)), height, width))


def square_around(height: int, width: int, side: int, x: int, y: int) -> tuple[int, int]:
    """(top, left) of the ``side`` x ``side`` square centred on column ``x``, row ``y`` of an image of
    ``height`` x ``width`` pixels, shifted inside the image (never padded; ``side`` <= both sides)."""
    top = min(max(y - side // 2, 0), height - side)
    left = min(max(x - side // 2, 0), width - side)
    return top, left


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """(C, h, w) uint8 -> (C, size, size) uint8, Pillow bilinear per channel (antialiased when shrinking)."""
    from PIL import Image

    if image.shape[1:] == (size, size):
        return np.ascontiguousarray(image)
    out = np.empty((image.shape[0], size, size), np.uint8)
    for k, plane in enumerate(image):
        out[k] = np.asarray(
            Image.fromarray(np.ascontiguousarray(plane)).resize((size, size), Image.Resampling.BILINEAR)
        )
    return out


class GuidedCrop:
    """``crop(image, centroids, study, seed) -> (C, size, size) uint8`` (see the module docstring).

    ``table``: a :class:`CropTable`, a path to one, or None for ``manifests/chammi75_crops.yaml``; ``jitter``
    overrides the table's. Picklable (DataLoader workers get a copy).
    """

    def __init__(self, size: int, table: CropTable | str | Path | None = None, jitter: float | None = None):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"guided crop size must be a positive integer, got {size!r}")
        self.size = size
        self.table = table if isinstance(table, CropTable) else load_crop_table(table)
        self.jitter = self.table.jitter if jitter is None else float(jitter)
        if not 0 <= self.jitter < 1:
            raise ValueError(f"guided crop jitter must be in [0, 1), got {self.jitter}")

    def box(
        self, height: int, width: int, centroids: np.ndarray | None, study: str, seed: int
    ) -> tuple[int, ...]:
        """(top, left, side, cell) of the crop of an image of this size: the square inside the image and the
        index of the cell it is centred on (-1: a random point or a whole image)."""
        g = _rng(seed)
        side0 = self.table.for_study(study).side(height, width)
        short = min(height, width)
        if side0 is None:  # used whole: the largest square, at a random offset along the long side
            top = int(g.integers(0, height - short + 1))
            left = int(g.integers(0, width - short + 1))
            return top, left, short, -1
        side = fit_side(side0 * g.uniform(1 - self.jitter, 1 + self.jitter), height, width)
        cells = np.zeros((0, 2)) if centroids is None else np.asarray(centroids).reshape(-1, 2)
        if len(cells):
            cell = int(g.integers(0, len(cells)))
            x, y = int(cells[cell, 0]), int(cells[cell, 1])
        else:
            cell, x, y = -1, int(g.integers(0, width)), int(g.integers(0, height))
        top, left = square_around(height, width, side, x, y)
        return top, left, side, cell

    def __call__(
        self, image: np.ndarray, centroids: np.ndarray | None, study: str, seed: int
    ) -> tuple[np.ndarray, tuple[int, ...]]:
        """(the crop resized to (C, size, size) uint8, its :meth:`box`) of a whole (C, H, W) uint8 image."""
        if image.dtype != np.uint8 or image.ndim != 3:
            raise ValueError(f"guided crops take (C, H, W) uint8 images, got {image.shape} {image.dtype}")
        top, left, side, cell = self.box(image.shape[1], image.shape[2], centroids, study, seed)
        return resize_square(image[:, top : top + side, left : left + side], self.size), (
            top,
            left,
            side,
            cell,
        )

    def __repr__(self) -> str:
        return f"GuidedCrop(size={self.size}, studies={len(self.table.studies)}, jitter={self.jitter})"
