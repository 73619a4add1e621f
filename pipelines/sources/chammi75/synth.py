"""A small CHAMMI-75 in its exact published layout (``chammi-build synth``, tests, README, the demo).

Writes ``OUT/CHAMMI-75_train/<study>/<id>-ch<k>.png`` (8-bit single-channel PNGs, ``k`` 0-based),
``OUT/CHAMMI-75_guidance/<study>/<id>-ch<k>.safetensors`` (key ``data``: int (N, 2) centroids as (x, y); key
``sizes`` (N,) areas in some studies) and the two metadata tables (``CHAMMI-75_train_metadata.csv`` and the
``CHAMMI-75_small_metadata.csv`` subset): one row per PNG, every documented column plus extra ones, columns in
a shuffled order, rows in a shuffled order (channel rows of one image not adjacent, ``imaging.channel``
1-based), ``unknown`` for missing values and ``no`` for non-controls, ids such as well ``B07`` and fov
``007`` that only survive as strings, and keys with ``+``, ``[`` and ``]``.

Five studies with different channel counts and sizes; four of them are in the crop-size table
(``manifests/chammi75_crops.yaml``), one is not (its images are used whole). One image has no cells, hence no
guidance file. The images show blob-like cells at their centroids, so guided crops hold cells.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from pipelines.sources.chammi75.layout import GUIDANCE_PREFIX, METADATA_TABLES, TRAIN_PREFIX, guidance_path

#: study -> (channel types in channel order, (height, width), images, write sizes into the guidance)
STUDIES: dict[str, tuple[tuple[str, ...], tuple[int, int], int, bool]] = {
    "hpa0018": (("microtubules", "protein", "nucleus", "er"), (128, 128), 4, True),
    "idr0017": (("nucleus",), (80, 104), 3, False),
    "jump0001": (("nucleus", "er", "rna", "agp", "mitochondria"), (120, 120), 4, True),
    "wtc0001": (("nucleus", "membrane", "protein"), (96, 150), 4, False),
    "zbf0002": (("bright-field", "differential interference contrast (DIC)"), (72, 96), 3, False),
}
#: studies of the small table
SMALL = ("hpa0018", "wtc0001")
#: the image that has no cells (no guidance file)
EMPTY = ("zbf0002", 2)


def _image_id(study: str, i: int) -> str:
    """Source image ids with the characters keys may hold (``+``, ``[``, ``]``)."""
    return {
        "hpa0018": f"{10093 + i}_F{i + 1}_1[2]+blue",
        "jump0001": f"BR00116991[{i}]+A0{i + 1}",
    }.get(study, f"{study}_img{i:03d}")


def _cells(rng: np.random.Generator, hw: tuple[int, int], n: int) -> np.ndarray:
    """(n, 2) int centroids (x, y) at least 6 px inside the image."""
    h, w = hw
    return np.stack([rng.integers(6, w - 6, n), rng.integers(6, h - 6, n)], axis=1).astype(np.int64)


def _render(rng: np.random.Generator, hw: tuple[int, int], centroids: np.ndarray, k: int) -> np.ndarray:
    """One 8-bit channel: a dim noisy background with a Gaussian blob per cell (size varies by channel)."""
    h, w = hw
    img = rng.normal(18, 4, (h, w))
    for x, y in centroids:
        r = 3.0 + k + rng.uniform(0, 2)
        half = int(4 * r) + 1  # the blob's support: drawing it on the whole image is slow at large sizes
        y0, y1, x0, x1 = max(0, y - half), min(h, y + half + 1), max(0, x - half), min(w, x + half + 1)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        img[y0:y1, x0:x1] += rng.uniform(90, 180) * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * r * r))
    return np.clip(img, 0, 255).astype(np.uint8)


def write_sample(out_dir: str | Path, seed: int = 0, scale: int = 1, images: int = 1) -> Path:
    """Write the sample into ``out_dir`` (the ``CHAMMI-75`` root); returns it. Deterministic by ``seed``.

    ``scale`` multiplies the image sides (and the cells per image by its square) and ``images`` the images per
    study: benchmarks use images of realistic sizes (``scale=8``: 576 x 768 to 1024 x 1024)."""
    from safetensors.numpy import save_file

    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    rows = []
    for study, (types, base_hw, base_n, with_sizes) in STUDIES.items():
        hw, n_images = (base_hw[0] * scale, base_hw[1] * scale), base_n * images
        (out / TRAIN_PREFIX / study).mkdir(parents=True, exist_ok=True)
        (out / GUIDANCE_PREFIX / study).mkdir(parents=True, exist_ok=True)
        for i in range(n_images):
            image_id = _image_id(study, i)
            empty = (study, i) == EMPTY
            n_cells = int(rng.integers(3, 9)) * scale * scale
            cells = np.zeros((0, 2), np.int64) if empty else _cells(rng, hw, n_cells)
            for k, channel_type in enumerate(types):
                rel = f"{TRAIN_PREFIX}/{study}/{image_id}-ch{k}.png"
                Image.fromarray(_render(rng, hw, cells, k)).save(out / rel)
                if not empty:
                    tensors = {"data": cells}
                    if with_sizes:
                        tensors["sizes"] = rng.uniform(40, 400, len(cells)).astype(np.float32)
                    save_file(tensors, str(out / guidance_path(rel)))
                rows.append(_row(study, i, image_id, k, channel_type, len(types), hw, rel))
    table = pd.DataFrame(rows)
    table = table.sample(frac=1.0, random_state=seed).reset_index(drop=True)  # row order is not guaranteed
    columns = list(table.columns)
    rng.shuffle(columns)  # nor is the column order
    table = table[columns]
    table.to_csv(out / METADATA_TABLES["full"], index=False)
    table[table["experiment.study"].isin(SMALL)].to_csv(out / METADATA_TABLES["small"], index=False)
    return out


def _row(
    study: str, i: int, image_id: str, k: int, channel_type: str, n: int, hw: tuple[int, int], rel: str
) -> dict[str, str]:
    """One metadata row (every value a string, as the published CSV holds them)."""
    control = "yes" if i == 0 else "no"
    return {
        "experiment.study": study,
        "experiment.plate": "unknown" if study == "idr0017" else f"{study[:3].upper()}-P{i % 2:02d}",
        "experiment.well": ["B07", "A01", "unknown", "P24"][i % 4],
        "experiment.reagent": "DMSO" if control == "yes" else ("unknown" if i % 2 else "BRD-K04185004"),
        "experiment.control": control,
        "biology.organism": "Homo sapiens",
        "biology.cell_line": {"hpa0018": "U-2 OS", "wtc0001": "WTC-11"}.get(study, "unknown"),
        "biology.cell_type": "unknown",
        "imaging.multi_channel_id": f"{study}/{image_id}",
        "imaging.panel": "unknown",
        "imaging.channel": str(k + 1),  # 1-based
        "imaging.channel_type": channel_type,
        "microscopy.type": "confocal" if study in ("hpa0018", "wtc0001") else "widefield",
        "microscopy.magnification": "63" if study == "hpa0018" else "20",
        "microscopy.fov": f"{i + 1:03d}",
        "geometry.width": str(hw[1]),
        "geometry.height": str(hw[0]),
        "geometry.depth": "1",
        "geometry.channels": str(n),
        "geometry.z_slice": "0",
        "geometry.timepoint": "unknown",
        "storage.filename": rel.rsplit("/", 1)[1],
        "storage.path": rel,
        "storage.zip": f"{study}.zip",
        "notes": "",  # an extra column the reader must ignore
    }
