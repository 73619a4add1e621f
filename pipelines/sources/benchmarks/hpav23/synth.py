"""A small HPAv23 ("mini-HPA") in its published layout, with planted localisation (tests, README, synth).

Writes ``OUT/metadata.csv`` (if_plate_id, position, sample, cell_id as a float column, antibody, locations
comma-separated, empty for Negative, gene_names) and ``OUT/<plate>/<plate>_<position>_<sample>_<cell_id>
_cell_image.png``: RGBA PNGs (R nucleus, G ER, B microtubules, A protein, as the reference reads them), 64 x
64 to keep the sample small (the real crops are 256 x 256; the adapter takes any size). Antibodies come from
the committed split lists (train, valid and test), each with one location set. Quirks the adapter must name:
a row whose PNG is missing, a row without an antibody.

Planted signal: the protein channel's pattern depends on the cell's locations (nuclear, a ring, a spotted
cytoplasm, or dim for Negative); the other stains are the same for every cell. A classifier on features of
the protein channel recovers the locations; shuffled features do not.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from chammi_data.evaluation.benchmarks.base import reference_table

SIZE = 64
#: location sets of the sample's antibodies (challenge categories; "" = Negative)
LOCATIONS = ("Nucleoplasm", "Plasma membrane", "Mitochondria", "Nucleoplasm,Mitochondria", "")
#: antibodies per split and cells per antibody
ANTIBODIES = {"train": 10, "valid": 5, "test": 5}
CELLS = 5


def _pattern(rng: np.random.Generator, locations: str, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """The protein channel for a location set."""
    r = np.hypot(yy - SIZE / 2, xx - SIZE / 2)
    img = np.zeros((SIZE, SIZE))
    if "Nucleoplasm" in locations:
        img += 180 * np.exp(-(r**2) / (2 * 7.0**2))
    if "Plasma membrane" in locations:
        img += 170 * np.exp(-((r - 22) ** 2) / 6.0)
    if "Mitochondria" in locations:
        spots = rng.integers(8, SIZE - 8, (14, 2))
        for y, x in spots:
            img += 140 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 5.0) * (r[y, x] > 10)
    return img + rng.normal(10, 3, (SIZE, SIZE))


def write_sample(out_dir: str | Path, seed: int = 0) -> Path:
    """Write the sample into ``out_dir`` (the HPAv23 root); returns it. Deterministic by ``seed``."""
    from PIL import Image

    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    r = np.hypot(yy - SIZE / 2, xx - SIZE / 2)
    nucleus = 200 * np.exp(-(r**2) / (2 * 8.0**2))
    er = 120 * np.exp(-((r - 14) ** 2) / 40.0)
    tubules = 90 * (0.5 + 0.5 * np.cos(np.arctan2(yy - 32, xx - 32) * 6)) * (r < 26)
    rows = []
    n = 0
    for split, count in ANTIBODIES.items():
        listed = reference_table("hpav23", f"{split}_antibodies.txt").read_text().split()
        for a, antibody in enumerate(sorted(listed)[:count]):
            locations = LOCATIONS[(a + len(rows)) % len(LOCATIONS)]
            plate = 1000 + n % 3
            for c in range(CELLS):
                n += 1
                position, sample, cell = f"{'ABC'[c % 3]}{a + 1}", 1 + c % 2, 10 + n
                planes = [nucleus, er, tubules, _pattern(rng, locations, yy, xx)]
                rgba = np.stack([np.clip(p + rng.normal(0, 4, p.shape), 0, 255) for p in planes], axis=2)
                folder = out / str(plate)
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rgba.astype(np.uint8), mode="RGBA").save(
                    folder / f"{plate}_{position}_{sample}_{cell}_cell_image.png"
                )
                rows.append(_row(plate, position, sample, cell, antibody, locations))
    rows.append(_row(1000, "Z9", 1, 9999, rows[0]["antibody"], "Nucleoplasm"))  # its PNG is missing
    rows.append({**_row(1001, "A1", 1, 12, "", "Nucleoplasm")})  # no antibody
    pd.DataFrame(rows).to_csv(out / "metadata.csv", index=False)
    return out


def _row(
    plate: int, position: str, sample: int, cell: int, antibody: str, locations: str
) -> dict[str, object]:
    return {
        "if_plate_id": plate,
        "position": position,
        "sample": sample,
        "cell_id": float(cell),  # as a float column, the way a table with gaps is often written
        "antibody": antibody,
        "locations": locations,
        "gene_names": "GENE",
    }
