"""Synthetic FEATURE-level inputs of every benchmark scorer, with planted structure.

``make(name, seed)`` returns (features, table, options): features carry the benchmark's signal (classes,
hits, knock-outs, locations, active compounds sharing targets); ``shuffled(features, seed)`` permutes the
feature rows against the table, which destroys every planted relation and must score at chance. Sizes are
small so every scorer runs in about a second; ``options`` shrink only what the protocol allows (null size,
epochs), never the protocol itself.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from chammi_data.evaluation.benchmarks import hpav23, idr0017, jumpcp, rbc_mc
from chammi_data.format.vocab import SOURCES


def shuffled(features: Any, seed: int = 1) -> Any:
    """Rows permuted against the table (per source for CHAMMI's dict)."""
    rng = np.random.default_rng(seed)
    if isinstance(features, dict):
        return {k: v[rng.permutation(len(v))] for k, v in features.items()}
    return features[rng.permutation(len(features))]


def make(name: str, seed: int = 0) -> tuple[Any, Any, dict[str, Any]]:
    """Planted (features, table, options) of benchmark ``name``."""
    return MAKERS[name](np.random.default_rng(seed))


def chammi(rng: np.random.Generator) -> tuple[dict, dict, dict]:
    feats, frames = {}, {}
    for info in SOURCES.values():
        splits = ["Train"] * 60 + [t for t in info.tasks for _ in range(30)]
        labels = rng.choice(list("abcd"), len(splits))
        frame = pd.DataFrame({"train_test_split": splits, "Label": labels})
        for t in info.tasks:
            frame[t] = frame["train_test_split"] == t
        frame[info.group_column] = rng.choice(["g0", "g1", "g2"], len(splits))
        centres = {lab: rng.normal(size=8) for lab in "abcd"}
        feats[info.folder] = np.stack([centres[x] for x in labels]) + 0.3 * rng.normal(size=(len(splits), 8))
        frames[info.folder] = frame
    return feats, frames, {"progress": False}


def rbc(
    rng: np.random.Generator, per_class: int = 25, dim: int = 16
) -> tuple[np.ndarray, pd.DataFrame, dict]:
    centres = rng.normal(size=(len(rbc_mc.CLASSES), dim))
    rows, feats = [], []
    for site, shift in (("Swiss", 0.3), ("Canadian", -0.3)):  # a site offset the classifier must cross
        for k, c in enumerate(rbc_mc.CLASSES):
            feats.append(centres[k] + shift + 0.5 * rng.normal(size=(per_class, dim)))
            rows += [{"site": site, "label": c}] * per_class
    return np.concatenate(feats).astype(np.float32), pd.DataFrame(rows), {}


#: Two mutant lines and one parental line of ground_truth.csv.
IDR_LINES = ("HCT116-104-007", "HCT116-02-004", "HCT116-PAR001")


def idr(
    rng: np.random.Generator, n_compounds: int = 60, dim: int = 6
) -> tuple[np.ndarray, pd.DataFrame, dict]:
    gt = idr0017.load_ground_truth()
    compounds = list(rng.choice(gt.index.to_numpy(), n_compounds, replace=False))
    rows, feats = [], []

    def image(line: str, plate: str, k: int, compound: str, control: bool, shift: float) -> None:
        for _ in range(3):  # three cell patches per image
            rows.append(
                {
                    "plate": plate,
                    "well": f"W{k % 40:02d}",
                    "image_id": f"{line}-{k}",
                    "cell_line": line,
                    "compound": "" if control else compound,
                    "control": control,
                }
            )
        centre = rng.normal(size=dim) * 0.2 + shift
        feats.append(centre + 0.2 * rng.normal(size=(3, dim)))

    for line in IDR_LINES:
        k = 0
        for rep in ("R1", "R2"):
            plate = f"{line}-{rep}"
            for _ in range(8):
                image(line, plate, k, "", True, 0.0)
                k += 1
            for c in compounds:
                image(line, plate, k, c, False, 1.5 if gt.loc[c, line] else 0.0)
                k += 1
    table = pd.DataFrame(rows)
    table.loc[table["control"], "compound"] = None
    return np.concatenate(feats), table, {}


def cellphie(
    rng: np.random.Generator, slices: int = 14, width: int = 6
) -> tuple[np.ndarray, pd.DataFrame, dict]:
    genes = ["non-target", "TP53", "NF1", "PTEN", "DGKE"]
    centres = {g: (0 if g == "non-target" else 1.2) * rng.normal(size=slices * width) for g in genes}
    rows, feats = [], []
    for g in genes:
        for train, n in ((True, 40 if g == "non-target" else 25), (False, 30 if g == "non-target" else 10)):
            for time in ("D28", "D14"):
                rows += [
                    {"gene": g, "time": time, "train": train, "umi": f"u{i}", "media": "m", "sample": "s1"}
                    for i in range(n)
                ]
                feats.append(centres[g] + rng.normal(size=(n, slices * width)))
    opts = {"channel_slices": slices, "slice_components": 4, "rf_trees": 30}
    return np.concatenate(feats), pd.DataFrame(rows), opts


HPA_LOCATIONS = ("Nucleoplasm", "Mitochondria", "Golgi apparatus", "Cytosol|Nucleoplasm", "")


def hpa(rng: np.random.Generator, cells: int = 8, dim: int = 16) -> tuple[np.ndarray, pd.DataFrame, dict]:
    split = pd.Series(hpav23.antibody_split())
    antibodies = [
        a
        for s, n in (("train", 40), ("valid", 12), ("test", 16))
        for a in sorted(split[split == s].index)[:n]
    ]
    names = ["Nucleoplasm", "Mitochondria", "Golgi apparatus", "Cytosol", "Negative"]
    centres = {n: 2.0 * rng.normal(size=dim) for n in names}
    rows, feats = [], []
    for k, ab in enumerate(antibodies):
        loc = HPA_LOCATIONS[k % len(HPA_LOCATIONS)]
        parts = loc.split("|") if loc else ["Negative"]
        for i in range(cells):
            rows.append(
                {
                    "antibody": ab,
                    "locations": loc,
                    "plate": "p1",
                    "position": f"r{k}",
                    "sample": "1",
                    "cell_id": str(i),
                }
            )
            feats.append(sum(centres[p] for p in parts) + rng.normal(size=dim))
    return np.stack(feats), pd.DataFrame(rows), {"epochs": 12, "patience": 4, "batch_size": 512}


#: Active compounds in pairs that share a target in the JUMP-Target-1 annotations.
def _target_pairs(count: int) -> list[tuple[str, str]]:
    by_target: dict[str, list[str]] = {}
    for compound, targets in jumpcp.target_lists().items():
        for t in targets:
            by_target.setdefault(t, []).append(compound)
    used: set[str] = set()
    pairs = []
    for t in sorted(by_target):
        free = [c for c in by_target[t] if c not in used]
        if len(free) >= 2:
            pairs.append((free[0], free[1]))
            used.update(free[:2])
        if len(pairs) == count:
            break
    return pairs


def jump(rng: np.random.Generator, dim: int = 8, cells: int = 4) -> tuple[np.ndarray, pd.DataFrame, dict]:
    pairs = _target_pairs(5)
    compounds = [c for p in pairs for c in p]
    effect = {}
    for a, b in pairs:  # partners share the direction of their effect: consistency
        d = rng.normal(size=dim)
        effect[a], effect[b] = 3 * d + 0.5 * rng.normal(size=dim), 3 * d + 0.5 * rng.normal(size=dim)
    rows, feats = [], []
    for plate in ("BR00117010", "BR00117011", "BR00117012"):
        wells = [("", "control", "negcon")] * 12 + [(c, "trt", "") for c in compounds]
        for k, (sample, ptype, ctype) in enumerate(wells):
            base = effect.get(sample, np.zeros(dim)) + 0.3 * rng.normal(size=dim)
            for _ in range(cells):
                rows.append(
                    {
                        "plate": plate,
                        "well": f"A{k:02d}",
                        "broad_sample": sample or None,
                        "pert_type": ptype,
                        "control_type": ctype or None,
                    }
                )
                feats.append(base + 0.3 * rng.normal(size=dim))
    return np.stack(feats), pd.DataFrame(rows), {"null_size": 2000, "consistency_null_size": 2000}


MAKERS = {
    "chammi": chammi,
    "rbc-mc": rbc,
    "idr0017": idr,
    "cellphie": cellphie,
    "jumpcp": jump,
    "hpav23": hpa,
}
