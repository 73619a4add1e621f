"""A small IDR0017 in its published layout, with planted hits (tests, README, ``chammi-build synth``).

Two plates: ``P1`` as ``P1.zip`` (16-bit TIFFs in a sub-folder of the zip) with its boxes beside it in
``P1.safetensors``, and ``P2`` unzipped as ``P2/`` with its one ``.safetensors`` inside (the reference
loader's form). ``idr0017_meta.csv`` has one row per image (nucleus channel) in CHAMMI-75's schema, its
``storage.zip`` once with and once without the ``.zip`` suffix. Three cell lines of ``ground_truth.csv``
(two mutant, one parental), control wells (``negative control``) and a dozen compounds per line, chosen so
each line has hits and non-hits, on both plates (replicates). Quirks the adapter must name: an image
without boxes, an image whose file is missing from its zip, a box that leaves the image (clipped, so
patches differ in size), a box wholly outside.

Planted signal: under a compound that is a hit for the image's line, the nuclei are larger and brighter and
textured; non-hits look like controls. Effect sizes rank hits first; shuffling features breaks it.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from chammi_data.store.paths import manifests_dir

LINES = ("HCT116-104-007", "HCT116-02-004", "HCT116-PAR001")
PLATES = ("P1", "P2")
SIZE, BOX, CELLS = 72, 20, 3
CONTROLS_PER_PLATE = 4


def _compounds(rng: np.random.Generator, n: int = 12) -> tuple[list[str], pd.DataFrame]:
    """``n`` compounds of ground_truth.csv with at least three hits and three non-hits in every line."""
    gt = pd.read_csv(manifests_dir() / "benchmarks" / "idr0017" / "ground_truth.csv")
    gt = gt.set_index("matched_drug_name")[list(LINES)].astype(bool)
    while True:
        names = sorted(rng.choice(gt.index.to_numpy(), n, replace=False).tolist())
        hits = gt.loc[names].sum()
        if (hits >= 3).all() and (hits <= n - 3).all():
            return names, gt


def _render(rng: np.random.Generator, centres: np.ndarray, hit: bool) -> np.ndarray:
    """A 16-bit nucleus image: a Gaussian blob per cell; hits are larger, brighter and textured."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    img = rng.normal(1500, 120, (SIZE, SIZE))
    for y, x in centres:
        r = (4.8 if hit else 3.0) + rng.uniform(0, 0.4)
        blob = np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * r * r))
        texture = 1 + (0.35 * np.sin(xx * 1.3) * np.sin(yy * 1.1) if hit else 0)
        img += (26000 if hit else 15000) * blob * texture
    return np.clip(img, 0, 65535).astype(np.uint16)


def write_sample(out_dir: str | Path, seed: int = 0) -> Path:
    """Write the sample into ``out_dir`` (the IDR0017 root); returns it. Deterministic by ``seed``."""
    import tifffile
    from safetensors.numpy import save, save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    compounds, gt = _compounds(rng)
    rows, files = [], {p: {} for p in PLATES}
    boxes: dict[str, dict[str, np.ndarray]] = {p: {} for p in PLATES}
    for plate in PLATES:
        k = 0
        for line in LINES:
            wells = [("", True)] * CONTROLS_PER_PLATE + [(c, False) for c in compounds]
            for compound, control in wells:
                k += 1
                name = f"{plate}_{line}_{k:03d}.tif"
                centres = rng.integers(BOX // 2 + 2, SIZE - BOX // 2 - 2, (CELLS, 2))
                hit = (not control) and bool(gt.loc[compound, line])
                buf = io.BytesIO()
                tifffile.imwrite(buf, _render(rng, centres, hit))
                files[plate][name] = buf.getvalue()
                half = BOX // 2
                b = np.concatenate([centres - half, centres + half], axis=1)[:, [0, 2, 1, 3]]
                # C order: safetensors writes an array's memory as it lies (a transposed view would scramble)
                boxes[plate][f"idr0017-{plate}-converted/{name}"] = np.ascontiguousarray(b, dtype=np.int32)
                rows.append(_row(plate, line, k, compound, control, name))
    # quirks: boxes clipped by / outside the image, an image without boxes, a file missing from the zip
    first = next(iter(boxes["P2"]))
    extra = [[SIZE - 8, SIZE + 12, 4, 24], [200, 220, 200, 220]]
    boxes["P2"][first] = np.ascontiguousarray(np.concatenate([boxes["P2"][first], extra]), dtype=np.int32)
    del boxes["P2"][f"idr0017-P2-converted/{rows[-1]['storage.filename']}"]
    del files["P1"][rows[5]["storage.filename"]]
    with zipfile.ZipFile(out / "P1.zip", "w") as zf:
        for name, data in files["P1"].items():
            zf.writestr(f"P1/images/{name}", data)
    (out / "P1.safetensors").write_bytes(save(boxes["P1"]))
    (out / "P2").mkdir(exist_ok=True)
    for name, data in files["P2"].items():
        (out / "P2" / name).write_bytes(data)
    save_file(boxes["P2"], str(out / "P2" / "P2_coordinates.safetensors"))
    pd.DataFrame(rows).to_csv(out / "idr0017_meta.csv", index=False)
    return out


def _row(plate: str, line: str, k: int, compound: str, control: bool, name: str) -> dict[str, str]:
    """One metadata row in CHAMMI-75's schema (every value a string)."""
    return {
        "experiment.study": "idr0017",
        "experiment.plate": plate,
        "experiment.well": f"{'ABCDEFGH'[k % 8]}{k // 8 + 1:02d}",
        "experiment.reagent": "DMSO" if control else compound,
        "experiment.control": "negative control" if control else "no",
        "biology.organism": "Homo sapiens",
        "biology.cell_line": line,
        "imaging.multi_channel_id": f"{plate}/{name[:-4]}",
        "imaging.channel": "1",
        "imaging.channel_type": "nucleus",
        "storage.filename": name,
        "storage.zip": f"{plate}.zip" if plate == "P1" else plate,
    }
