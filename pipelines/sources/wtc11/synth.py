"""Small, realistic WTC-11 raw sample in the Allen layout: ``metadata.csv`` + OME-TIFF z-stacks.

``WTC11Pipeline.synth`` writes it. Seven structures (four training ones, three novel ones for Task_two), each
on its own plate with a plate-level gain, background and noise; six cell-cycle stages drawn as
stage-specific nuclei (the learnable label signal); a protein channel patterned by structure. Crop sizes
vary per cell, some larger than the 238 x 374 tile. Deterministic by seed (the OME UUIDs too).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

#: structure_name -> protein pattern; the first four form the training pool, the last three Task_two.
SYNTH_STRUCTURES = {
    "SON": "speckles",
    "TOMM20": "mito",
    "TUBA1B": "tubules",
    "ST6GAL1": "golgi",
    "TJP1": "junction",
    "CETN2": "centrioles",
    "ACTN1": "fibres",
}
NAME_DICT = {
    "crop_raw": ["dna", "membrane", "structure"],
    "crop_seg": [
        "dna_segmentation",
        "membrane_segmentation",
        "membrane_segmentation_roof",
        "struct_segmentation",
        "struct_segmentation_roof",
    ],
}
PIXEL_UM = 0.108333


def _ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2


def _nuclei(stage: str, h: int, w: int) -> list[tuple[float, float, float, float, float]]:
    """(cy, cx, ry, rx, brightness) of the nucleus blobs of a stage: the learnable label signal."""
    cy, cx, r = h / 2, w / 2, min(h, w)
    return {
        "M0": [(cy, cx, 0.30 * r, 0.36 * r, 0.55)],
        "M1M2": [(cy, cx, 0.26 * r, 0.28 * r, 0.8)],
        "M3": [(cy, cx, 0.30 * r, 0.07 * r, 1.0)],
        "M4M5": [(cy, cx - 0.16 * r, 0.28 * r, 0.06 * r, 1.0), (cy, cx + 0.16 * r, 0.28 * r, 0.06 * r, 1.0)],
        "M6M7_single": [
            (cy, cx - 0.22 * r, 0.15 * r, 0.13 * r, 0.8),
            (cy, cx + 0.22 * r, 0.15 * r, 0.13 * r, 0.8),
        ],
        "M6M7_complete": [
            (cy, cx - 0.42 * r, 0.17 * r, 0.15 * r, 0.7),
            (cy, cx + 0.42 * r, 0.17 * r, 0.15 * r, 0.7),
        ],
    }[stage]


def _protein(
    pattern: str,
    yy: np.ndarray,
    xx: np.ndarray,
    inside: np.ndarray,
    ring: np.ndarray,
    nucleus: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    h, w = inside.shape
    out = np.zeros((h, w))
    if pattern == "junction":
        return ring * (yy < h * 0.5)
    if pattern in ("speckles", "mito", "centrioles", "golgi"):
        where = {
            "speckles": nucleus > 0,
            "mito": inside & (nucleus == 0),
            "centrioles": inside,
            "golgi": inside & (nucleus == 0),
        }[pattern]
        n, rad = {"speckles": (25, 2.0), "mito": (60, 1.5), "centrioles": (2, 2.5), "golgi": (1, 9.0)}[
            pattern
        ]
        ys, xs = np.nonzero(where)
        if len(ys):
            for i in rng.integers(0, len(ys), n):
                out += np.exp(-((yy - ys[i]) ** 2 + (xx - xs[i]) ** 2) / (2 * rad**2))
        return out * inside
    angles = rng.uniform(0, np.pi, 12 if pattern == "tubules" else 5)
    if pattern == "fibres":
        angles = np.full(5, rng.uniform(0, np.pi)) + rng.normal(0, 0.05, 5)
    for a in angles:  # straight filaments through the cell, radial (tubules) or parallel (fibres)
        off = 0.0 if pattern == "tubules" else rng.uniform(-0.3, 0.3) * min(h, w)
        dist = np.abs((yy - h / 2) * np.cos(a) - (xx - w / 2) * np.sin(a) - off)
        out += np.exp(-(dist**2) / 3.0)
    return out * inside


def synth_cell(
    stage: str,
    pattern: str,
    shape_yx: tuple[int, int],
    z: int,
    gain: float,
    background: float,
    noise: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """One synthetic crop_raw stack (Z, C=dna/membrane/structure, Y, X) uint16."""
    h, w = shape_yx
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    nucleus = np.zeros((h, w))
    for cy, cx, ry, rx, b in _nuclei(stage, h, w):
        nucleus = np.maximum(nucleus, b * (_ellipse(yy, xx, cy, cx, ry, rx) <= 1))
    if stage == "M1M2":  # condensing chromatin: granular texture
        nucleus *= 0.6 + 0.4 * (rng.random((h, w)) > 0.5)
    body = _ellipse(yy, xx, h / 2, w / 2, 0.45 * h, 0.47 * w)
    if stage == "M6M7_complete":  # two daughter cells
        body = np.minimum(
            _ellipse(yy, xx, h / 2, 0.27 * w, 0.4 * h, 0.24 * w),
            _ellipse(yy, xx, h / 2, 0.73 * w, 0.4 * h, 0.24 * w),
        )
    inside, ring = body <= 1, np.abs(np.sqrt(body) - 1) < 0.05
    protein = _protein(pattern, yy, xx, inside, ring, nucleus, rng)
    planes = np.stack([nucleus, ring.astype(float) + 0.15 * inside, protein / max(protein.max(), 1e-9)])
    depth = np.exp(-((np.arange(z) - (z - 1) / 2) ** 2) / 2.0)  # the middle plane is in focus
    stack = background + gain * 3000.0 * depth[:, None, None, None] * planes[None]
    stack = stack + rng.normal(0, noise, stack.shape)
    return np.clip(stack, 0, 65535).astype(np.uint16)


def write_sample(
    out_dir: Path, seed: int = 0, cells_per_structure: int = 28, z: int = 3, *, stages: Sequence[str]
) -> Path:
    """Write ``metadata.csv`` + ``crop_raw/<CellId>.ome.tiff`` (+ ``crop_seg``) into ``out_dir``.

    7 structures (4 train + 3 novel) on their own plates with plate-level gain/background/noise nuisance,
    ``stages`` (the pipeline's label list, ``wtc11.STAGES``) with stage-dependent nuclei. Crops vary in size
    (some larger than 238 x 374, most smaller). Deterministic by ``seed`` (OME UUIDs are derived from it).
    Returns the metadata.csv path.
    """
    out_dir = Path(out_dir)
    (out_dir / "crop_raw").mkdir(parents=True, exist_ok=True)
    (out_dir / "crop_seg").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for s, (structure, pattern) in enumerate(SYNTH_STRUCTURES.items()):
        plate = 3500 + s
        gain, background, noise = rng.uniform(0.5, 1.5), rng.uniform(80, 500), rng.uniform(20, 120)
        for j in range(cells_per_structure):
            stage = stages[(j + s) % len(stages)]
            cell_id = 10_000 + 100 * s + j
            shape = (int(rng.integers(110, 250)), int(rng.integers(170, 400)))
            cell_rng = np.random.default_rng([seed, cell_id])
            stack = synth_cell(
                stage, pattern, shape, z, gain * cell_rng.uniform(0.8, 1.2), background, noise, cell_rng
            )
            raw, seg = f"crop_raw/{cell_id}.ome.tiff", f"crop_seg/{cell_id}.ome.tiff"
            write_ome(
                out_dir / raw, stack, NAME_DICT["crop_raw"], f"{seed:08x}-0000-4000-8000-{cell_id:012d}"
            )
            masks = (
                np.stack(
                    [stack[:, 0] > background + noise * 4]
                    + [stack[:, 1] > background + noise * 4] * 2
                    + [stack[:, 2] > background + noise * 4] * 2,
                    axis=1,
                ).astype(np.uint8)
                * 255
            )
            write_ome(
                out_dir / seg, masks, NAME_DICT["crop_seg"], f"{seed:08x}-0000-4000-9000-{cell_id:012d}"
            )
            rows.append(
                {
                    "CellId": cell_id,
                    "structure_name": structure,
                    "cell_stage": stage,
                    "FOVId": plate * 10 + j % 3,
                    "PlateId": plate,
                    "WellId": f"{plate}-{j % 3}",
                    "crop_raw": raw,
                    "crop_seg": seg,
                    "name_dict": json.dumps(NAME_DICT),
                    "scale_micron": json.dumps([PIXEL_UM] * 3),
                }
            )
    path = out_dir / "metadata.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def write_ome(path: Path, stack: np.ndarray, names: list[str], uuid: str) -> None:
    """Write a (Z, C, Y, X) stack as an OME-TIFF with channel names, isotropic pixel size and a fixed UUID."""
    tifffile.imwrite(
        path,
        stack,
        ome=True,
        compression="zlib",
        metadata={
            "axes": "ZCYX",
            "Channel": {"Name": names},
            "UUID": uuid,
            "Creator": "chammi synthetic",
            "PhysicalSizeX": PIXEL_UM,
            "PhysicalSizeY": PIXEL_UM,
            "PhysicalSizeZ": PIXEL_UM,
        },
    )
