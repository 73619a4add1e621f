"""Synthetic Cell Painting raw data in the real layout (:mod:`pipelines.sources.cp.layout`), deterministic by
seed.

Seven plates in three datasets, chosen so every CP task of ``manifests/tasks/cp.yaml`` is non-empty:

========  ==========  ========  =======================================  ==============================
dataset   plate       role      files                                    positions
========  ==========  ========  =======================================  ==============================
LINCS     SQ00014812  train     Phenix names, load_data, illum *.npy      per-site Nuclei.csv
LINCS     SQ00014813  train     Phenix names, load_data                   per-plate Nuclei.csv + Image.csv
CDRP      24277       train     Phenix names (other ch numbers), load     CellProfiler SQLite
LINCS     SQ00014819  novel     Phenix names, load_data                   per-site Nuclei.csv
CDRP      24279       novel     Phenix names, load_data with URL_ cols    per-site Nuclei.csv
BBBC022   20585       bbbc022   ImageXpress names, load_data              per-site Nuclei.csv
BBBC022   20586       bbbc022   ImageXpress names, no load_data           per-plate Nuclei.csv (Metadata_)
========  ==========  ========  =======================================  ==============================

Training plates carry the 4 training labels and the 3 novel compounds (Task_four, leave-one-plate-out over 3
plates); novel and BBBC022 plates carry the 4 training labels. One site per well, 512 x 512 (``field_size``),
6-8 nuclei per site: about 280 cells. Each compound has its own look (nucleus size/shape/texture, ER, RNA,
Golgi and mitochondria intensity and pattern); each plate has its own gain, background and noise, BBBC022 a
stronger shift, and SQ00014812 a vignetting that its illumination functions undo. Plate effects that survive
the per-channel percentile scaling (cell size, focus blur, DNA->RNA and AGP->Mito bleed-through, noise
relative to signal) make the novel-plate and BBBC022 tasks harder than the IID one.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from scipy import ndimage as ndi

from pipelines.sources.cp.layout import RAW_CHANNELS
from pipelines.sources.cp.positions import write_cellprofiler_sqlite

TRAIN_COMPOUNDS: dict[str, str] = {  # label -> full broad_sample ("" = DMSO)
    "BRD-A29260609": "BRD-A29260609-001-04-5",
    "BRD-K04185004": "BRD-K04185004-003-01-2",
    "BRD-K21680192": "BRD-K21680192-300-06-1",
    "DMSO": "",
}
#: Stand-ins for gemfibrozil, fluticasone propionate and fluspirilene (their Broad IDs are not confirmed).
NOVEL_COMPOUNDS: dict[str, str] = {
    "BRD-S00000001": "BRD-S00000001-001-01-1",
    "BRD-S00000002": "BRD-S00000002-001-01-1",
    "BRD-S00000003": "BRD-S00000003-001-01-1",
}
#: (dataset, plate, platemap name, role, naming, positions kind)
PLATES: tuple[tuple[str, str, str, str, str, str], ...] = (
    ("LINCS", "SQ00014812", "C-7161-01-LM6-001", "train", "phenix_lincs", "site_csv"),
    ("LINCS", "SQ00014813", "C-7161-01-LM6-001", "train", "phenix_lincs", "plate_csv_image"),
    ("CDRP", "24277", "H-BIOA-004-3", "train", "phenix_cdrp", "sqlite"),
    ("LINCS", "SQ00014819", "C-7161-01-LM6-002", "novel", "phenix_lincs", "site_csv"),
    ("CDRP", "24279", "H-BIOA-007-3", "novel", "phenix_cdrp_url", "site_csv"),
    ("BBBC022", "20585", "BBBC022-MAP-1", "bbbc022", "ixm", "site_csv"),
    ("BBBC022", "20586", "BBBC022-MAP-1", "bbbc022", "ixm_noload", "plate_csv_meta"),
)
NOVEL_PLATES: tuple[str, ...] = ("SQ00014819", "24279")
#: Phenix channel numbers per project: they differ, load_data.csv carries the mapping.
PHENIX_CH: dict[str, dict[str, int]] = {
    "lincs": {"DNA": 5, "ER": 4, "RNA": 3, "AGP": 2, "Mito": 1},
    "cdrp": {"DNA": 1, "ER": 2, "RNA": 3, "AGP": 4, "Mito": 5},
}
#: Per label: nucleus radius px, elongation, DNA brightness, DNA texture, ER, RNA, AGP, Mito gains, mito
#: spottiness.
PHENOTYPES: dict[str, tuple[float, float, float, float, float, float, float, float, float]] = {
    "DMSO": (13, 1.0, 1.0, 0.15, 1.0, 1.0, 1.0, 1.0, 0.3),
    "BRD-A29260609": (17, 1.0, 0.9, 0.15, 1.7, 1.0, 1.0, 1.0, 0.3),
    "BRD-K04185004": (12, 1.1, 1.0, 0.15, 1.0, 0.9, 1.0, 1.9, 0.9),
    "BRD-K21680192": (13, 1.0, 1.3, 0.8, 1.0, 1.8, 0.8, 0.8, 0.3),
    "BRD-S00000001": (14, 1.8, 1.0, 0.2, 1.0, 1.0, 1.7, 1.0, 0.3),
    "BRD-S00000002": (15, 1.0, 0.8, 0.1, 0.6, 0.6, 1.0, 0.5, 0.1),
    "BRD-S00000003": (9, 1.0, 1.9, 0.4, 1.2, 1.0, 1.0, 1.3, 0.6),
}


def _wells(labels: list[str], rng: np.random.Generator) -> dict[str, str]:
    """{well: label}: labels shuffled over row A (so the well never encodes the label)."""
    order = rng.permutation(len(labels))
    return {f"A{i + 1:02d}": labels[j] for i, j in enumerate(order)}


def _centres(rng: np.random.Generator, size: int, n: int, min_dist: float) -> list[tuple[float, float]]:
    pts: list[tuple[float, float]] = []
    for _ in range(2000):
        if len(pts) == n:
            break
        y, x = rng.uniform(20, size - 20, 2)
        if all((y - py) ** 2 + (x - px) ** 2 >= min_dist**2 for py, px in pts):
            pts.append((float(y), float(x)))
    return pts


def render_site(
    rng: np.random.Generator, label: str, size: int, n_cells: int, nuisance: dict[str, np.ndarray | float]
) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """(5, size, size) uint16 field (RAW_CHANNELS order) and the nucleus centres (y, x) it contains."""
    r0, elong, dna_b, dna_tex, er, rna, agp, mito, spots = PHENOTYPES[label]
    sig = np.zeros((5, size, size))
    fine = ndi.gaussian_filter(rng.normal(size=(size, size)), 1.0)
    fine /= fine.std()
    centres = _centres(rng, size, n_cells, min_dist=3.6 * r0)
    for cy, cx in centres:
        r = r0 * float(nuisance.get("size", 1.0)) * rng.uniform(0.85, 1.15)
        th = rng.uniform(0, np.pi)
        # draw in a window around the cell only: the profiles are ~0 beyond 3 nucleus radii
        half = int(3.2 * r) + 4
        y0, y1 = max(int(cy) - half, 0), min(int(cy) + half, size)
        x0, x1 = max(int(cx) - half, 0), min(int(cx) + half, size)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        win = (slice(None), slice(y0, y1), slice(x0, x1))
        tex = fine[y0:y1, x0:x1]
        u = (xx - cx) * np.cos(th) + (yy - cy) * np.sin(th)
        v = -(xx - cx) * np.sin(th) + (yy - cy) * np.cos(th)
        d_nuc = np.hypot(u / (r * np.sqrt(elong)), v * np.sqrt(elong) / r)
        d_cell = np.hypot(u, v) / (2.3 * r)
        nuc = 1 / (1 + np.exp((d_nuc - 1) * 8))
        cell = 1 / (1 + np.exp((d_cell - 1) * 6))
        cyto = np.clip(cell - nuc, 0, 1)
        gy, gx = cy + 1.4 * r * np.sin(th), cx + 1.4 * r * np.cos(th)  # Golgi beside the nucleus
        golgi = np.exp(-((yy - gy) ** 2 + (xx - gx) ** 2) / (2 * (0.5 * r) ** 2))
        s = sig[win]
        s[0] += dna_b * nuc * (1 + dna_tex * tex)
        s[1] += er * cyto * (1.2 - 0.7 * d_cell)
        s[2] += rna * (0.5 * cyto + 0.6 * nuc * (tex > 1.2))
        s[3] += agp * (0.9 * golgi + 0.35 * cyto)
        s[4] += mito * cyto * (0.4 + spots * 2.0 * (tex > 0.8))
    # optics that per-channel percentile scaling does not undo: bleed-through and focus
    sig[2] += float(nuisance.get("crosstalk", 0.0)) * sig[0]
    sig[4] += float(nuisance.get("crosstalk", 0.0)) * sig[3]
    if nuisance.get("blur", 0.0):
        sig = ndi.gaussian_filter(sig, (0, float(nuisance["blur"]), float(nuisance["blur"])))
    gain = np.asarray(nuisance["gain"]).reshape(5, 1, 1)
    vignette = nuisance.get("vignette", 1.0)
    raw = nuisance["background"] + 9000.0 * gain * np.clip(sig, 0, None) * vignette
    raw = raw + rng.normal(0, float(nuisance["noise"]), raw.shape)
    return np.clip(np.rint(raw), 0, 65535).astype(np.uint16), centres


def _vignette(size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    rr = np.hypot(yy - size / 2, xx - size / 2) / (size / np.sqrt(2))
    return 1.0 - 0.45 * rr**2


def _file_name(naming: str, plate: str, well: str, site: int, ch: str, rng: np.random.Generator) -> str:
    if naming.startswith("ixm"):
        guid = str(uuid.UUID(bytes=rng.bytes(16))).upper()
        return f"{plate}_{well}_s{site}_w{RAW_CHANNELS.index(ch) + 1}{guid}.tif"
    nums = PHENIX_CH["lincs" if "lincs" in naming else "cdrp"]
    row, col = ord(well[0]) - ord("A") + 1, int(well[1:])
    return f"r{row:02d}c{col:02d}f{site:02d}p01-ch{nums[ch]}sk1fk1fl1.tiff"


def write_sample(out_dir: Path, seed: int = 0, *, field_size: int = 512) -> None:
    """Write the seven synthetic plates under ``out_dir/<dataset>/`` (see the module docstring)."""
    rng = np.random.default_rng(seed)
    maps: dict[str, dict[str, str]] = {}  # platemap name -> {well: label}
    barcodes: dict[str, list[tuple[str, str]]] = {}  # dataset -> [(plate, map)]
    for dataset, plate, map_name, role, naming, pos_kind in PLATES:
        labels = list(TRAIN_COMPOUNDS) + (list(NOVEL_COMPOUNDS) if role == "train" else [])
        if map_name not in maps:
            maps[map_name] = _wells(labels, rng)
        barcodes.setdefault(dataset, []).append((plate, map_name))
        pdir = out_dir / dataset / plate
        (pdir / "images").mkdir(parents=True, exist_ok=True)
        # plate nuisance: per-channel gain, background, noise; BBBC022 is a different lab and microscope
        shift = 1.6 if dataset == "BBBC022" else 1.0
        nuisance: dict[str, np.ndarray | float] = {
            "gain": rng.uniform(0.7, 1.3, 5) * (rng.uniform(0.5, 1.5, 5) if shift > 1 else 1.0),
            "background": float(rng.uniform(300, 900) * shift),
            "noise": float(rng.uniform(40, 120) * shift),
            "size": float(rng.uniform(0.9, 1.1) ** shift),
            "blur": float(rng.uniform(0.0, 1.2) * shift),
            "crosstalk": float(rng.uniform(0.0, 0.25) * shift),
        }
        if plate == "SQ00014812":
            nuisance["vignette"] = _vignette(field_size)
            (pdir / "illum").mkdir(exist_ok=True)
            for ch in RAW_CHANNELS:
                np.save(pdir / "illum" / f"{plate}_Illum{ch}.npy", nuisance["vignette"].astype(np.float32))
        rows, nuclei, images = [], [], []
        for image_number, (well, label) in enumerate(sorted(maps[map_name].items()), start=1):
            site = 1
            field, centres = render_site(rng, label, field_size, int(rng.integers(6, 9)), nuisance)
            row = {"Metadata_Plate": plate, "Metadata_Well": well, "Metadata_Site": site}
            for k, ch in enumerate(RAW_CHANNELS):
                name = _file_name(naming, plate, well, site, ch, rng)
                tifffile.imwrite(pdir / "images" / name, field[k], compression="zlib")
                if naming.endswith("_url"):
                    row[f"URL_Orig{ch}"] = f"images/{name}"
                else:
                    row[f"FileName_Orig{ch}"], row[f"PathName_Orig{ch}"] = name, "images"
            rows.append(row)
            images.append(
                {
                    "TableNumber": 1,
                    "ImageNumber": image_number,
                    "Image_Metadata_Plate": plate,
                    "Image_Metadata_Well": well,
                    "Image_Metadata_Site": site,
                }
            )
            site_nuclei = [
                {
                    "ImageNumber": image_number,
                    "ObjectNumber": i + 1,
                    "Metadata_Plate": plate,
                    "Metadata_Well": well,
                    "Metadata_Site": site,
                    # CellProfiler centroids are a little off the drawn centre
                    "Nuclei_Location_Center_X": round(cx + rng.normal(0, 0.7), 3),
                    "Nuclei_Location_Center_Y": round(cy + rng.normal(0, 0.7), 3),
                }
                for i, (cy, cx) in enumerate(centres)
            ]
            nuclei += site_nuclei
            if pos_kind == "site_csv":
                sdir = pdir / "analysis" / f"{plate}-{well}-{site}"
                sdir.mkdir(parents=True, exist_ok=True)
                pd.DataFrame(site_nuclei).drop(
                    columns=["Metadata_Plate", "Metadata_Well", "Metadata_Site"]
                ).to_csv(sdir / "Nuclei.csv", index=False)
        if naming != "ixm_noload":
            pd.DataFrame(rows).to_csv(pdir / "load_data.csv", index=False)
        nuc_df = pd.DataFrame(nuclei)
        if pos_kind == "plate_csv_meta":
            nuc_df.drop(columns=["ImageNumber"]).to_csv(pdir / "Nuclei.csv", index=False)
        elif pos_kind == "plate_csv_image":
            nuc_df.drop(columns=["Metadata_Plate", "Metadata_Well", "Metadata_Site"]).to_csv(
                pdir / "Nuclei.csv", index=False
            )
            img_df = pd.DataFrame(images).drop(columns=["TableNumber"])
            img_df.columns = ["ImageNumber", "Metadata_Plate", "Metadata_Well", "Metadata_Site"]
            img_df.to_csv(pdir / "Image.csv", index=False)
        elif pos_kind == "sqlite":
            nuc = nuc_df[
                ["ImageNumber", "ObjectNumber", "Nuclei_Location_Center_X", "Nuclei_Location_Center_Y"]
            ]
            write_cellprofiler_sqlite(
                pdir / f"{plate}.sqlite", pd.DataFrame(images), nuc.assign(TableNumber=1)
            )
    for dataset, entries in barcodes.items():
        pm = out_dir / dataset / "platemaps"
        pm.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(entries, columns=["Assay_Plate_Barcode", "Plate_Map_Name"]).to_csv(
            pm / "barcode_platemap.csv", index=False
        )
        for map_name in sorted({m for _, m in entries}):
            full = {**TRAIN_COMPOUNDS, **NOVEL_COMPOUNDS}
            recs = [
                {
                    "well_position": w,
                    "broad_sample": full[lab],
                    "mmoles_per_liter": 0.0 if lab == "DMSO" else 10.0,
                    "solvent": "DMSO",
                }
                for w, lab in sorted(maps[map_name].items())
            ]
            pd.DataFrame(recs).to_csv(pm / f"{map_name}.txt", sep="\t", index=False)
