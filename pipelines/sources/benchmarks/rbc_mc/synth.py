"""A small RBC-MC in its published layout, with planted signal (tests, README, ``chammi-build synth``).

Writes ``OUT/Swiss/<class>/<name>.ome.tif`` and ``OUT/Canadian/<batch>/<class>/<name>.ome.tif`` (one folder
level more at one site: the adapter globs recursively), 16-bit OME-TIFFs of varying size (two sizes per
site), plus the quirks the adapter must name: an ``Undecidable`` folder, a folder that is no class, and a
file directly in a site folder.

Planted signal: each class is a bright disc whose radius and texture depend on the class, drawn the same way
at both sites (the protocol trains on one site and tests on the other), so features that see shape
separate the classes across sites; shuffling the labels brings cross-site accuracy to chance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipelines.sources.benchmarks.rbc_mc.pipeline import CLASSES, EXCLUDED

#: images per (site, class); sizes (H, W) per site
PER_CLASS = 6
SIZES = {"Swiss": ((40, 40), (44, 48)), "Canadian": ((40, 40), (48, 44))}


def render(rng: np.random.Generator, hw: tuple[int, int], k: int) -> np.ndarray:
    """A 16-bit bright-field cell of class number ``k``: a disc of class-dependent radius, rim and texture."""
    h, w = hw
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = h / 2 + rng.normal(0, 1), w / 2 + rng.normal(0, 1)
    r = np.hypot(yy - cy, xx - cx)
    radius = 7 + 1.6 * k
    body = 1.0 / (1 + np.exp((r - radius) / 1.2))
    rim = np.exp(-((r - radius) ** 2) / 4.0) * (k % 3)
    ripples = (0.5 + 0.5 * np.cos(r * (0.4 + 0.25 * k))) * body * (k % 2)
    img = 9000 + 20000 * body + 8000 * rim + 6000 * ripples + rng.normal(0, 500, (h, w))
    return np.clip(img, 0, 65535).astype(np.uint16)


def write_sample(out_dir: str | Path, seed: int = 0) -> Path:
    """Write the sample into ``out_dir`` (the RBC-MC root); returns it. Deterministic by ``seed``."""
    import tifffile

    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    for site, sizes in SIZES.items():
        base = out / site / ("batch1" if site == "Canadian" else "")
        for k, label in enumerate((*CLASSES, EXCLUDED, "Debris")):
            folder = base / label
            folder.mkdir(parents=True, exist_ok=True)
            count = PER_CLASS if label in CLASSES else 2
            for i in range(count):
                img = render(rng, sizes[i % 2], k % len(CLASSES))
                tifffile.imwrite(folder / f"{site[:2]}_{label}_{i:03d}.ome.tif", img, ome=True)
        tifffile.imwrite(out / site / f"{site[:2]}_loose.ome.tif", render(rng, sizes[0], 0), ome=True)
    return out
