"""A small JUMP-CP in its published layout, with planted activity (tests, README, ``chammi-build synth``).

The seven CPJUMP1 compound plates, each ``<plate>/sc-metadata.csv`` (DeepProfiler's columns: index, Key,
Image_Name, Nuclei_Location_Center_X/Y, Target, Metadata_broad_sample, val) and its cells as 8-bit tape PNGs
(160 x 800: nucleus, er, rna, agp, mitochondria). Per plate: DMSO wells (empty ``Metadata_broad_sample``)
and one well of each of six JUMP-Target-1 compounds, one cell per well. Quirks the adapter must name: a row
whose image is missing, a row whose Key names another plate.

Planted signal: four compounds are active (two pairs, each pair sharing a target in the annotations, each
pair with its own phenotype: channel intensities and nucleus size); the other two and DMSO look alike. The
activity mAP of the active compounds beats the inactive ones; shuffling features destroys it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from chammi_data.evaluation.benchmarks.base import reference_table
from pipelines.sources.benchmarks.jumpcp.pipeline import PLATES

WIDTH, CHANNELS, DMSO_WELLS, CELLS = 160, 5, 3, 1


def _compounds() -> tuple[list[str], list[str]]:
    """(four active compounds: two pairs that share a target, two inactive ones), from the annotations."""
    ann = pd.read_csv(
        reference_table("jumpcp", "JUMP-Target-1_compound_metadata_additional_annotations.tsv"), sep="\t"
    )
    ann = ann[(ann["pert_type"] == "trt") & ann["target_list"].notna()].sort_values("broad_sample")
    by_target: dict[str, list[str]] = {}
    for b, targets in zip(ann["broad_sample"], ann["target_list"], strict=True):
        for t in targets.split("|"):
            by_target.setdefault(t, []).append(b)
    pairs: list[list[str]] = []
    used: set[str] = set()
    for t in sorted(by_target):
        members = [b for b in by_target[t] if b not in used]
        if len(members) >= 2 and len(pairs) < 2:
            pairs.append(members[:2])
            used.update(members[:2])
    inactive = [b for b in ann["broad_sample"] if b not in used][:2]
    return [b for p in pairs for b in p], inactive


def _cell(rng: np.random.Generator, pattern: np.ndarray | None) -> np.ndarray:
    """One tape (160, 800) uint8: a cell whose per-channel brightness and size follow ``pattern``."""
    yy, xx = np.mgrid[0:WIDTH, 0:WIDTH]
    cy, cx = WIDTH / 2 + rng.normal(0, 3, 2)
    tiles = []
    for k in range(CHANNELS):
        scale, radius = (1.0, 14.0) if pattern is None else (pattern[k], 14.0 + 10 * pattern[-1])
        r = radius * (1.6 if k else 1.0) + rng.normal(0, 0.5)
        body = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        tiles.append(np.clip(rng.normal(12, 3, (WIDTH, WIDTH)) + 150 * scale * body, 0, 255))
    return np.concatenate(tiles, axis=1).astype(np.uint8)


def write_sample(out_dir: str | Path, seed: int = 0) -> Path:
    """Write the sample into ``out_dir`` (the JUMP-CP root); returns it. Deterministic by ``seed``."""
    from PIL import Image

    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    active, inactive = _compounds()
    phenotypes = [rng.uniform(0.2, 1.6, CHANNELS + 1) for _ in range(2)]
    pattern = {b: phenotypes[i // 2] for i, b in enumerate(active)}
    wells = [("", None)] * DMSO_WELLS + [(b, pattern.get(b)) for b in sorted(active + inactive)]
    for plate in PLATES:
        rows = []
        for w, (sample, pat) in enumerate(wells):
            well = f"{'ABCDEFGHIJKLMNOP'[w % 16]}{w // 16 + 1:02d}"
            for c in range(CELLS):
                rel = f"{plate}/{well}/1_{c}.png"
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(_cell(rng, pat)).save(out / rel)
                rows.append(_row(len(rows), plate, well, rel, sample))
        rows.append(_row(len(rows), plate, "P24", f"{plate}/P24/1_0.png", ""))  # its image is missing
        rows.append(_row(len(rows), "BR00000000", "A01", f"{plate}/A01/1_0.png", ""))  # another plate's Key
        pd.DataFrame(rows).to_csv(out / plate / "sc-metadata.csv", index=False)
    return out


def _row(i: int, plate: str, well: str, rel: str, sample: str) -> dict[str, object]:
    return {
        "index": i,
        "Key": f"{plate}/{well}/1",
        "Image_Name": rel,
        "Nuclei_Location_Center_X": 80,
        "Nuclei_Location_Center_Y": 80,
        "Target": "",
        "Metadata_broad_sample": sample,
        "val": 0,
    }
