"""Stored guided crops of CHAMMI-75 (``chammi-build --source chammi75 --set chammi75.store=crops|both``).

By default a CHAMMI-75 release keeps whole images and the stream cuts guided crops
(:mod:`chammi_data.augment.guided_crop`). ``store: crops`` cuts them once, at build time, and stores each crop
as its own row; ``store: both`` stores the whole images and their crops. A stored crop is:

1. **its box**, the stream's box without the randomness: the study's side from the crop table
   (``crop * max(H, W) / long_side`` image pixels, **no jitter**, so a rebuild is byte-identical), rounded,
   at least 1 and at most ``min(H, W)`` (an image smaller than the side gives its largest square), centred on
   one cell's centroid and shifted inside the image (never padded): ``guided_crop.fit_side`` and
   ``guided_crop.square_around``, the functions the stream uses;
2. **its cells**: every cell of the image when it has at most ``crops_per_image``, else ``crops_per_image``
   of them drawn without replacement by a generator seeded from the sha256 of the image's ``cell_id`` (the
   same cells on every machine and every rebuild), kept in the guidance file's order;
3. **a study used whole** (``crop: null`` in the table): one crop per image, the centred largest square
   (the whole image when it is square), whatever its cells;
4. **an image without cells** in a cropped study has no crop: with ``store: crops`` it is a named skip
   ("no cells to crop around", naming its missing guidance file); with ``store: both`` its whole image is
   still stored;
5. **its pixels**: the box resized to ``crop_size`` x ``crop_size`` by ``guided_crop.resize_square`` (Pillow
   bilinear per channel, antialiased when shrinking), uint8, as the stream resizes its crops.

A crop row: ``cell_id`` = ``<image cell_id>-crop<k>`` (``k`` = 0, 1, ... in the order above; an image's id
is ``chammi75-<16 hex digits>``, never ``-crop``, so ``cell_id.str.contains("-crop")`` tells the rows apart
without parsing ``meta``); the image's channels, groups (hence its split: ``holdout_studies`` holds its
crops out too) and ``meta``, plus ``kind`` (``"crop"``; an image row of ``store: both`` says ``"image"``; a
default release has no ``kind``), ``parent_cell_id``, ``crop.y0``, ``crop.x0``, ``crop.side`` (the box in
image pixels), ``crop.cell`` (the cell's index in the image's guidance, -1 for a study used whole) and
``crop.x``, ``crop.y`` (its centroid in image pixels, None for a study used whole). A crop carries no cells
of its own (no guidance tail), so ``load()`` returns it as stored, (C, crop_size, crop_size), and ``stream``
passes it on as it is: its ``guided_crop`` argument only cuts the rows that still hold whole images.

The crop table is read once, when the build's options are checked (``crop_table``: null for
``manifests/chammi75_crops.yaml``, the stream's table, or a path), and travels to the workers inside the
options, so every worker cuts with the same table and a changed table invalidates the spills of a resumed
build.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from chammi_data.augment.guided_crop import (
    CropSize,
    CropTable,
    fit_side,
    load_crop_table,
    resize_square,
    square_around,
)
from chammi_data.format.schema import Cell

#: what a release stores: whole images (the default), guided crops, or both
STORE_MODES = ("images", "crops", "both")
#: the options of this module (merged into the pipeline's ``DEFAULTS``)
CROP_DEFAULTS: dict[str, Any] = {
    "store": "images",
    "crop_size": 224,
    "crops_per_image": 8,
    "crop_table": None,
}
#: the resolved crop table inside the options (set by :func:`check_crop_options`, never by a user)
TABLE_KEY = "_crop_table"
#: the largest ``crop_size`` (a crop is one tar member: 4096 x 4096 x 25 channels is 400 MB)
MAX_CROP_SIZE = 4096


def check_crop_options(opts: dict[str, Any]) -> None:
    """Check ``store``, ``crop_size``, ``crops_per_image`` and ``crop_table``; for a build that stores crops,
    read the crop table into ``opts[TABLE_KEY]``. ``ValueError`` names the key and what it accepts."""
    if opts["store"] not in STORE_MODES:
        raise ValueError(
            f"config chammi75.store must be one of {', '.join(STORE_MODES)}, got {opts['store']!r}"
        )
    for key, top in (("crop_size", MAX_CROP_SIZE), ("crops_per_image", None)):
        v = opts[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1 or (top is not None and v > top):
            allowed = f"in 1..{top}" if top else ">= 1"
            raise ValueError(f"config chammi75.{key} must be an integer {allowed}, got {v!r}")
    table = opts["crop_table"]
    if table is not None and (not isinstance(table, str) or not table):
        raise ValueError(
            f"config chammi75.crop_table must be null or the path of a crop table, got {table!r}"
        )
    if opts["store"] != "images":
        try:
            opts[TABLE_KEY] = table_to_options(load_crop_table(table))
        except (OSError, ValueError) as exc:
            raise ValueError(f"config chammi75.crop_table: {exc}") from None


def table_to_options(table: CropTable) -> dict[str, Any]:
    """A crop table as plain JSON (``{"default": [crop, long_side], "studies": {study: [...]}}``)."""
    return {
        "default": [table.default.crop, table.default.long_side],
        "studies": {k: [v.crop, v.long_side] for k, v in sorted(table.studies.items())},
    }


def table_from_options(data: Mapping[str, Any]) -> CropTable:
    """The :class:`CropTable` of :func:`table_to_options` (no jitter: stored crops have none)."""
    studies = {
        k: CropSize(int(c), int(s)) if c is not None else CropSize(None, None)
        for k, (c, s) in data["studies"].items()
    }
    crop, side = data["default"]
    default = CropSize(None, None) if crop is None else CropSize(int(crop), int(side))
    return CropTable(studies, default, 0.0)


@dataclass(frozen=True)
class CropBox:
    """One stored crop's square in image pixels and the cell it is centred on (-1: a study used whole)."""

    top: int
    left: int
    side: int
    cell: int
    x: int | None = None
    y: int | None = None


def pick_cells(n_cells: int, cap: int, image_id: str) -> np.ndarray:
    """Indices of the cells to crop around, ascending: all ``n_cells`` when there are at most ``cap``, else
    ``cap`` drawn without replacement by a generator seeded from sha256(``image_id``)."""
    if n_cells <= cap:
        return np.arange(n_cells)
    seed = int.from_bytes(hashlib.sha256(image_id.encode()).digest()[:8], "little")
    g = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 0x73746F72])))
    return np.sort(g.choice(n_cells, size=cap, replace=False))


def crop_boxes(
    height: int, width: int, centroids: np.ndarray, size: CropSize, cap: int, image_id: str
) -> list[CropBox]:
    """The boxes of an image's stored crops (module docstring, points 1-4); [] for an image without cells
    in a cropped study. ``centroids``: (N, 2) (x, y) inside the image."""
    side0 = size.side(height, width)
    if side0 is None:  # used whole: the centred largest square
        short = min(height, width)
        return [CropBox((height - short) // 2, (width - short) // 2, short, -1)]
    side = fit_side(side0, height, width)
    cells = np.asarray(centroids).reshape(-1, 2)
    boxes = []
    for i in pick_cells(len(cells), cap, image_id):
        x, y = int(cells[i, 0]), int(cells[i, 1])
        top, left = square_around(height, width, side, x, y)
        boxes.append(CropBox(top, left, side, int(i), x, y))
    return boxes


def crop_cells(image: Cell, opts: Mapping[str, Any]) -> list[Cell]:
    """The stored crops of one whole-image cell (with its guidance) under the build's options."""
    table = table_from_options(opts[TABLE_KEY])
    study = str(image.groups.get("dataset", ""))
    h, w = image.image.shape[1:]
    centroids = np.zeros((0, 2), np.int32) if image.guidance is None else image.guidance.centroids
    boxes = crop_boxes(h, w, centroids, table.for_study(study), int(opts["crops_per_image"]), image.cell_id)
    out = []
    for k, b in enumerate(boxes):
        pixels = resize_square(
            image.image[:, b.top : b.top + b.side, b.left : b.left + b.side], opts["crop_size"]
        )
        meta = {**image.meta, "kind": "crop", "parent_cell_id": image.cell_id}
        meta.update({"crop.y0": b.top, "crop.x0": b.left, "crop.side": b.side, "crop.cell": b.cell})
        meta.update({"crop.x": b.x, "crop.y": b.y})
        cell_id = f"{image.cell_id}-crop{k}"
        out.append(
            Cell(pixels, image.channels, image.source, image.label, cell_id, meta, groups=dict(image.groups))
        )
    return out
