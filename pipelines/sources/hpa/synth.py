"""Small, realistic HPA raw sample: 4-PNG fields + ``train.csv`` + ``kaggle_2021.tsv``
(``HPAPipeline.synth``).

About 40 fields of 768 x 768 px, each with 3-6 cells drawn from simple biophysics-free but structured
models: textured nuclei with nucleoli (blue), microtubule filaments grown as persistent random walks from
the nucleus to the cell edge (red), a reticular ER network denser near the nucleus with a nuclear-envelope
rim (yellow), and a protein channel (green) patterned by class - nuclear speckles = bright nuclear dots,
mitochondria = short cytoplasmic rods, microtubules = the filaments, Golgi = a perinuclear cluster on one
side, nucleoplasm = diffuse nuclear, cytosol = diffuse cytoplasm, ER = the reticulum.

Nuisance: per cell line an intensity gain and a cell-size factor; per field a gain, a background offset,
Gaussian noise; per cell an expression level. Every third field is written as a 16-bit PNG, the others as
8-bit. The plan covers every task: 4 training classes x 3 training lines x 2 fields (Train + Task_one),
4 classes in HEK 293 (Task_two), 3 novel classes x 3 lines (Task_three, leave-one-line-out), plus three
rows the pipeline must skip (two multi-label, one class outside CHAMMI). Deterministic by seed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage as ndi

FIELD = 768
TRAIN_LINES = ("U-2 OS", "A549", "HeLa")
HELD_OUT_LINE = "HEK 293"
#: cell line -> (intensity gain, cell size factor)
LINE_NUISANCE = {"U-2 OS": (1.0, 1.1), "A549": (0.75, 0.95), "HeLa": (1.25, 1.0), "HEK 293": (0.65, 0.85)}
TRAIN_CLASSES = (4, 14, 10, 7)  # nuclear speckles, mitochondria, microtubules, Golgi apparatus
NOVEL_CLASSES = (0, 16, 6)  # nucleoplasm, cytosol, endoplasmic reticulum


def field_plan() -> list[tuple[str, str, str]]:
    """[(Label string, cell line, role)] in write order; role is for humans only."""
    plan = [(str(c), line, "train") for c in TRAIN_CLASSES for line in TRAIN_LINES for _ in range(2)]
    plan += [(str(c), HELD_OUT_LINE, "novel line") for c in TRAIN_CLASSES]
    plan += [(str(c), line, "novel class") for c in NOVEL_CLASSES for line in TRAIN_LINES]
    plan += [("4|14", "HeLa", "multi-label"), ("0|16", "A549", "multi-label"), ("2", "U-2 OS", "not CHAMMI")]
    return plan


def _field_id(seed: int, index: int) -> str:
    """A UUID-shaped id like the real HPA ones, derived from (seed, index)."""
    h = hashlib.sha256(f"hpa-synth\x1f{seed}\x1f{index}".encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def _place_cells(
    rng: np.random.Generator, n: int, radius: float, min_sep: float = 1.6
) -> list[tuple[float, float]]:
    """Up to ``n`` centres at least ``min_sep`` radii apart; nuclei stay inside the field, cells may be
    cut."""
    centres: list[tuple[float, float]] = []
    lo, hi = 0.55 * radius, FIELD - 0.55 * radius
    for _ in range(400):
        if len(centres) == n:
            break
        c = (float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)))
        if all((c[0] - y) ** 2 + (c[1] - x) ** 2 >= (min_sep * radius) ** 2 for y, x in centres):
            centres.append(c)
    return centres


def _walks(
    rng: np.random.Generator,
    starts: np.ndarray,
    angles: np.ndarray,
    steps: int,
    inside: np.ndarray,
    owner: np.ndarray,
    turn: float = 0.12,
    step: float = 2.0,
) -> np.ndarray:
    """Accumulate persistent random walks (filaments, rods) into an image; a walk stops on leaving its
    cell."""
    acc = np.zeros((FIELD, FIELD), np.float32)
    pos = starts.astype(np.float64).copy()
    ang = angles.astype(np.float64).copy()
    own = owner.copy()
    alive = np.ones(len(pos), bool)
    for _ in range(steps):
        ang += rng.normal(0.0, turn, len(ang))
        pos[:, 0] += step * np.sin(ang)
        pos[:, 1] += step * np.cos(ang)
        ry, rx = np.rint(pos[:, 0]).astype(int), np.rint(pos[:, 1]).astype(int)
        alive &= (ry >= 0) & (ry < FIELD) & (rx >= 0) & (rx < FIELD)  # leaving the field ends a walk
        iy, ix = np.clip(ry, 0, FIELD - 1), np.clip(rx, 0, FIELD - 1)
        alive &= inside[iy, ix] == own
        np.add.at(acc, (iy[alive], ix[alive]), 1.0)
    return acc


def render_field(
    rng: np.random.Generator, cls: int, line: str, n_cells: int | None = None, min_sep: float = 1.6
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """One field of class ``cls`` in cell line ``line``: float images (about 0..1.5, (768, 768)) per stain,
    and the ground truth ``{"cells", "nuclei"}`` label images (int32, 0 = background).

    ``n_cells`` (default 3-6 at random) cells whose centres are at least ``min_sep`` cell radii apart
    (below ~1.8 neighbouring cells touch; the benchmark uses 1.1 for crowded fields)."""
    gain, size = LINE_NUISANCE[line]
    radius = 95.0 * size * rng.uniform(0.9, 1.1)
    centres = _place_cells(rng, int(rng.integers(3, 7)) if n_cells is None else n_cells, radius, min_sep)
    # running minima over cells of the normalised distance to each cell / nucleus boundary (1 = boundary);
    # each cell is evaluated only in its own window, which keeps a field at ~0.2 s
    cmin = np.full((FIELD, FIELD), np.inf, np.float32)
    nmin = np.full((FIELD, FIELD), np.inf, np.float32)
    owner = np.zeros((FIELD, FIELD), np.int64)
    nuc_centres = []
    half = int(1.5 * radius)
    for k, (cy, cx) in enumerate(centres):
        y0, y1 = max(0, int(cy) - half), min(FIELD, int(cy) + half)
        x0, x1 = max(0, int(cx) - half), min(FIELD, int(cx) + half)
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        th, e = rng.uniform(0, np.pi), rng.uniform(0.85, 1.2)
        dy, dx = yy - cy, xx - cx
        u, v = dy * np.cos(th) + dx * np.sin(th), -dy * np.sin(th) + dx * np.cos(th)
        wobble = 1 + 0.12 * np.sin(3 * np.arctan2(v, u) + rng.uniform(0, 6.3))
        d = np.sqrt((u / (radius * e)) ** 2 + (v * e / radius) ** 2) / wobble
        win = (slice(y0, y1), slice(x0, x1))
        closer = d < cmin[win]  # touching cells split where their normalised distances meet
        cmin[win] = np.where(closer, d, cmin[win])
        owner[win] = np.where(closer, k, owner[win])
        ny, nx = cy + rng.normal(0, 0.08 * radius), cx + rng.normal(0, 0.08 * radius)
        nuc_centres.append((ny, nx))
        rn, en = 0.42 * radius * rng.uniform(0.9, 1.1), rng.uniform(0.85, 1.15)
        nd = np.sqrt(((yy - ny) / (rn * en)) ** 2 + ((xx - nx) * en / rn) ** 2)
        nmin[win] = np.minimum(nmin[win], nd)
    in_cell = np.where(cmin < 1.0, owner + 1, 0)
    cmin = np.minimum(cmin, 3.0)
    nmin = np.minimum(nmin, 3.0)
    nucleus = (nmin < 1.0) & (in_cell > 0)
    cyto = (in_cell > 0) & ~nucleus
    level = rng.uniform(0.6, 1.4, len(centres) + 1).astype(np.float32)
    level[0] = 0.0
    expr = rng.uniform(0.5, 1.5, len(centres) + 1).astype(np.float32)
    expr[0] = 0.0

    # blue: textured nucleus, brighter centre, dark nucleoli
    tex = ndi.gaussian_filter(rng.normal(0, 1, (FIELD, FIELD)).astype(np.float32), 3)
    blue = nucleus * (0.7 + 0.3 * np.clip(1 - nmin, 0, 1)) * (1 + 0.8 * tex) * level[in_cell]
    nucleoli = np.zeros((FIELD, FIELD), np.float32)
    for ny, nx in nuc_centres:
        for _ in range(int(rng.integers(1, 4))):
            nucleoli[
                int(np.clip(ny + rng.normal(0, 12), 0, FIELD - 1)),
                int(np.clip(nx + rng.normal(0, 12), 0, FIELD - 1)),
            ] = 1
    nucleoli = np.clip(ndi.gaussian_filter(nucleoli, 5) * 300, 0, 1)
    blue = ndi.gaussian_filter(blue * (1 - 0.6 * nucleoli), 1.5)

    # red: microtubules from near each nucleus outward, plus a diffuse cytoplasmic floor
    n_fil = 45
    starts, angles, owners = [], [], []
    for k, (ny, nx) in enumerate(nuc_centres):
        a = rng.uniform(0, 2 * np.pi, n_fil)
        r = 0.3 * radius
        starts.append(np.stack([ny + r * np.sin(a), nx + r * np.cos(a)], 1))
        angles.append(a + rng.normal(0, 0.3, n_fil))
        owners.append(np.full(n_fil, k + 1))
    fil = _walks(rng, np.concatenate(starts), np.concatenate(angles), 70, in_cell, np.concatenate(owners))
    fil = np.clip(ndi.gaussian_filter(fil, 1.2) * 2.5, 0, 1.2)
    red = fil + 0.15 * (in_cell > 0) * level[in_cell]

    # yellow: ER reticulum (near-zero level set of smooth noise), denser near the nucleus, envelope rim
    noise = ndi.gaussian_filter(rng.normal(0, 1, (FIELD, FIELD)).astype(np.float32), 2.5)
    net = np.exp(-((noise / (0.25 * noise.std())) ** 2))
    density = np.clip(1.3 - 0.8 * cmin, 0, 1)
    rim = np.exp(-(((nmin - 1.0) / 0.08) ** 2)) * (in_cell > 0)
    yellow = ndi.gaussian_filter(net * cyto * density + 0.6 * rim + 0.1 * cyto, 1.0)

    # green: the protein, patterned by class, scaled per cell by its expression level
    green = np.zeros((FIELD, FIELD), np.float32)
    e = expr[in_cell]
    if cls == 4:  # nuclear speckles
        dots = np.zeros_like(green)
        pts = np.argwhere(nucleus & (nucleoli < 0.3))
        pick = pts[rng.choice(len(pts), size=min(len(pts), 22 * len(centres)), replace=False)]
        dots[pick[:, 0], pick[:, 1]] = 1.0
        green = np.clip(ndi.gaussian_filter(dots, 2.5) * 60, 0, 1.3) + 0.08 * nucleus
    elif cls == 14:  # mitochondria: short rods in the cytoplasm
        pts = np.argwhere(cyto)
        pick = pts[rng.choice(len(pts), size=min(len(pts), 90 * len(centres)), replace=False)]
        rods = _walks(
            rng,
            pick,
            rng.uniform(0, 2 * np.pi, len(pick)),
            6,
            in_cell,
            in_cell[pick[:, 0], pick[:, 1]],
            turn=0.05,
            step=1.5,
        )
        green = np.clip(ndi.gaussian_filter(rods, 1.3) * 3.0, 0, 1.3)
    elif cls == 10:  # microtubules
        green = fil * 1.1
    elif cls == 7:  # Golgi: perinuclear cluster on one side of the nucleus
        blobs = np.zeros_like(green)
        for ny, nx in nuc_centres:
            a0 = rng.uniform(0, 2 * np.pi)
            for _ in range(12):
                a, r = a0 + rng.normal(0, 0.35), 0.42 * radius * rng.uniform(1.05, 1.45)
                y, x = (
                    int(np.clip(ny + r * np.sin(a), 0, FIELD - 1)),
                    int(np.clip(nx + r * np.cos(a), 0, FIELD - 1)),
                )
                blobs[y, x] += 1.0
        green = np.clip(ndi.gaussian_filter(blobs, 4.0) * 120, 0, 1.4) * (in_cell > 0)
    elif cls == 0:  # nucleoplasm
        green = ndi.gaussian_filter(nucleus * (1 - nucleoli) * (0.8 + 0.3 * tex), 2.0)
    elif cls == 16:  # cytosol
        green = ndi.gaussian_filter(cyto * (0.6 + 0.2 * tex) * np.clip(1.2 - 0.5 * cmin, 0, 1), 3.0)
    elif cls == 6:  # endoplasmic reticulum
        green = yellow * 1.2
    else:  # other classes (only in rows that must be skipped): faint diffuse signal
        green = 0.3 * ndi.gaussian_filter((in_cell > 0).astype(np.float32), 4.0)
    green = green * np.where(in_cell > 0, e, 1.0)
    truth = {"cells": in_cell.astype(np.int32), "nuclei": np.where(nucleus, in_cell, 0).astype(np.int32)}
    return {"red": red * gain, "green": green * gain, "blue": blue * gain, "yellow": yellow * gain}, truth


def quantise(
    rng: np.random.Generator, img: np.ndarray, bits: int, field_gain: float, bg: float, noise: float
) -> np.ndarray:
    """Add background and noise, scale to the bit depth and round (clipped)."""
    x = field_gain * img + bg + rng.normal(0, noise, img.shape).astype(np.float32)
    top = 65535 if bits == 16 else 255
    scale = rng.uniform(0.15, 0.4) * top if bits == 16 else rng.uniform(150, 200)
    out = np.clip(np.rint(x * scale), 0, top)
    return out.astype(np.uint16 if bits == 16 else np.uint8)


def write_hpa_sample(out_dir: Path, seed: int = 0) -> None:
    """Write ``out_dir/train/{ID}_{stain}.png``, ``out_dir/train.csv``, ``out_dir/kaggle_2021.tsv``."""
    out_dir = Path(out_dir)
    img_dir = out_dir / "train"
    img_dir.mkdir(parents=True, exist_ok=True)
    rows, lines = [], []
    for i, (label, line, _role) in enumerate(field_plan()):
        rng = np.random.default_rng([seed, 7, i])
        fid = _field_id(seed, i)
        cls = int(label.split("|")[0])
        images, _ = render_field(rng, cls, line)
        bits = 16 if i % 3 == 0 else 8
        field_gain, bg, noise = rng.uniform(0.7, 1.3), rng.uniform(0.01, 0.05), rng.uniform(0.01, 0.03)
        for stain in ("red", "green", "blue", "yellow"):
            arr = quantise(rng, images[stain], bits, field_gain, bg, noise)
            # low zlib effort: noisy fields barely compress better at higher levels, and it is much faster
            Image.fromarray(arr).save(img_dir / f"{fid}_{stain}.png", compress_level=1)
        rows.append({"ID": fid, "Label": label})
        lines.append({"Image": fid, "Label": label, "Cellline": line, "in_trainset": "True"})
    pd.DataFrame(rows).to_csv(out_dir / "train.csv", index=False)
    pd.DataFrame(lines).to_csv(out_dir / "kaggle_2021.tsv", sep="\t", index=False)
