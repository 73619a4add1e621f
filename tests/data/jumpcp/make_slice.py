"""Write the JUMP-CP test slice (run from the repository root with shared/ beside it).

Rows A-D (96 wells) of plates BR00117010 and BR00117011 (U2OS, 48 h: one condition, so compounds have a
replicate on the other plate), the ``Metadata_*`` columns and the first 120 non-brightfield features.
"""

from pathlib import Path

import pandas as pd

SRC = Path(__file__).resolve().parents[3].parent / "shared/data/chammi75-benchmarks/jumpcp/cellprofiler"
OUT = Path(__file__).resolve().parent
for plate in ("BR00117010", "BR00117011"):
    frame = pd.read_csv(SRC / f"{plate}_normalized_feature_select_negcon_batch.csv.gz")
    meta = [c for c in frame.columns if c.startswith("Metadata")]
    feats = [c for c in frame.columns if c not in meta and "ZBF" not in c and "Brightfield" not in c][:120]
    rows = frame["Metadata_Well"].str[0].isin(list("ABCD"))
    frame.loc[rows, meta + feats].to_csv(OUT / f"{plate}_slice.csv.gz", index=False, float_format="%.6g")
