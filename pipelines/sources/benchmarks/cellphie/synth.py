"""A small CellPHIE in its published form, a pickle, with planted knock-outs (tests, README, synth).

Writes ``OUT/cellphie_cells.pkl``: a pickled pandas DataFrame with ``image`` ((14, 64, 64) uint16 per
cell), ``soma_mask`` ((64, 64) bool), ``train``, ``UMI``, ``Gene``, ``Time``, ``Media``, ``Sample`` - the
columns of the published pickle. Cells: ``non-target`` controls and a few target genes, at ``D28`` and
another time point, in both the pickle's train and test parts, plus ``DGKE`` (dropped by the protocol).
The build source reads only the converted form (``chammi-build cellphie-convert``); ``write_sample`` writes
the pickle and, unless ``convert=False``, its conversion beside it in ``OUT`` (so ``--input OUT`` builds).

Planted signal: each target gene's knock-out changes a different pair of channels (brightness and size of
the soma), ``non-target`` cells do not. Per-gene classifiers separate targets from controls; shuffling the
features brings them to chance.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd

GENES = ("GENE_A", "GENE_B", "GENE_C")
CHANNELS, SIZE = 14, 64
PICKLE = "cellphie_cells.pkl"


def _cell(rng: np.random.Generator, gene: str) -> tuple[np.ndarray, np.ndarray]:
    """(image (14, 64, 64) uint16, soma mask (64, 64) bool) of one cell."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    cy, cx = SIZE / 2 + rng.normal(0, 2, 2)
    r = np.hypot(yy - cy, xx - cx)
    mask = r < 20 + rng.normal(0, 1)
    image = np.empty((CHANNELS, SIZE, SIZE))
    changed = {g: (2 * k, 2 * k + 1) for k, g in enumerate(GENES)}.get(gene, ())
    for c in range(CHANNELS):
        bright, radius = (2.4, 15.0) if c in changed else (1.0, 9.0)
        image[c] = 3000 * bright * np.exp(-(r**2) / (2 * radius**2)) + rng.normal(800, 60, (SIZE, SIZE))
    return np.clip(image, 0, 65535).astype(np.uint16), mask


def write_sample(out_dir: str | Path, seed: int = 0, convert: bool = True) -> Path:
    """Write the pickle (and its conversion) into ``out_dir``; returns it. Deterministic by ``seed``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    plan = [("non-target", 16, 10), *[(g, 8, 6) for g in GENES], ("DGKE", 3, 3)]
    for time in ("D28", "D14"):
        for gene, n_train, n_test in plan:
            for k in range(n_train + n_test):
                image, mask = _cell(rng, gene)
                rows.append(
                    {
                        "image": image,
                        "soma_mask": mask,
                        "train": k < n_train,
                        "UMI": f"UMI{len(rows):05d}",
                        "Gene": gene,
                        "Time": time,
                        "Media": "NM",
                        "Sample": f"S{k % 3}",
                    }
                )
    with open(out / PICKLE, "wb") as fh:
        pickle.dump(pd.DataFrame(rows), fh, protocol=4)
    if convert:
        from pipelines.sources.benchmarks.cellphie.convert import convert_pickle

        convert_pickle(out / PICKLE, out, trust=True)  # our own pickle, written just above
    return out
