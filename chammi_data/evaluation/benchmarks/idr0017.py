"""IDR0017 (Breinig et al. 2015): compound hits on HCT116 isogenic lines ranked by a distribution effect size.

Scorer contract: ``score(features, table, **options) -> BenchmarkResult`` with ``features`` (N, D) float, one
row per cell patch (nucleus channel), and ``table`` of N rows (row i <-> features[i]) with the columns

- ``plate``, ``well``, ``image_id``: the patches of one (plate, image_id) are one image, averaged;
- ``cell_line``: as the column names of ``ground_truth.csv`` (e.g. ``HCT116-104-007``, ``HCT116-PAR001``);
- ``compound``: matched against the ``matched_drug_name`` column of ``ground_truth.csv`` (the published
  scorer's match); a treated compound absent from it counts as a non-hit, as published, and the count is
  reported (``n["compounds_not_in_ground_truth"]``);
- ``control`` (bool): negative-control (solvent) wells; their ``compound`` is ignored.

Protocol (issue 20): image feature = mean of its patches. Per cell line, the control images are whitened
(ZCA on the controls: covariance over n, epsilon 1e-6) and every compound's effect size is the first
Wasserstein distance (``scipy.stats.wasserstein_distance``) between the control-vs-control and the
treated-vs-control Euclidean distance distributions. ``fusion="early"`` pools all plates of a line (one set
of controls); ``fusion="late"`` computes per plate against that plate's controls and averages a compound's
effect sizes over plates. Compounds ranked by effect size are scored against the line's hits: AUC-ROC
(headline, averaged), AUC-PR (trapezoid under the PR curve, as published) and average precision,
Recall@50 and Recall@100. Averages exclude the parental lines (names containing ``PAR``), which stay in
``groups["cell_lines"]``. No random choice: deterministic.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy.spatial.distance import cdist, pdist

from chammi_data.evaluation.benchmarks.base import (
    BenchmarkInputError,
    BenchmarkResult,
    bool_column,
    check_constant_within,
    check_features,
    group_mean,
    library_versions,
    reference_table,
    require_columns,
    table_record,
    text_column,
)
from chammi_data.evaluation.benchmarks.metrics import (
    average_precision,
    pr_auc,
    recall_at_k,
    roc_auc,
    wasserstein,
    whiten_on_controls,
)

NAME = "idr0017"
COLUMNS = ("plate", "well", "image_id", "cell_line", "compound", "control")
GROUND_TRUTH = "ground_truth.csv"
NAME_COLUMN = "matched_drug_name"
FUSIONS = ("early", "late")
METRICS = ("auc_roc", "auc_pr", "average_precision", "recall_at_50", "recall_at_100")


def load_ground_truth() -> pd.DataFrame:
    """ground_truth.csv indexed by ``matched_drug_name``: one bool column per cell line."""
    gt = pd.read_csv(reference_table(NAME, GROUND_TRUTH))
    lines = [c for c in gt.columns if c.startswith("HCT116")]
    return gt.set_index(NAME_COLUMN)[lines].astype(bool)


def score(
    features: Any,
    table: pd.DataFrame,
    *,
    fusion: str = "early",
    epsilon: float = 1e-6,
    min_controls: int = 3,
) -> BenchmarkResult:
    """Effect-size ranking of compounds per cell line against ground_truth.csv (see the module docstring)."""
    if fusion not in FUSIONS:
        raise BenchmarkInputError(f"{NAME}: unknown fusion {fusion!r}; valid: {', '.join(FUSIONS)}")
    x = check_features(features, table, NAME)
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise BenchmarkInputError(
            f"{NAME}: table lacks column(s) {', '.join(missing)}; required: {', '.join(COLUMNS)}"
        )
    require_columns(table, [c for c in COLUMNS if c != "compound"], NAME)
    control_all = bool_column(table, "control", NAME)
    no_name = np.flatnonzero(~control_all & table["compound"].isna().to_numpy())
    if len(no_name):
        raise BenchmarkInputError(f"{NAME}: column compound is empty for treated row {int(no_name[0])}")
    t = table.assign(control=control_all, compound=table["compound"].fillna("").astype(str))
    check_constant_within(t, ("plate", "image_id"), ("well", "cell_line", "compound", "control"), NAME)
    images_x, images, _ = group_mean(x, t, ("plate", "image_id"))
    gt = load_ground_truth()
    lines = sorted(set(text_column(images, "cell_line")))
    unknown = [ln for ln in lines if ln not in gt.columns]
    if unknown:
        raise BenchmarkInputError(
            f"{NAME}: cell line {unknown[0]} is not a column of {GROUND_TRUTH}; known: "
            f"{', '.join(gt.columns)}"
        )
    rows, effects = [], []
    treated_names = set(images.loc[~images["control"].to_numpy(bool), "compound"])
    for line in lines:
        sel = text_column(images, "cell_line") == line
        eff = _line_effects(
            images_x[sel], images[sel].reset_index(drop=True), fusion, epsilon, min_controls, line
        )
        hits = gt[line].reindex(eff.index, fill_value=False).to_numpy(bool)
        if hits.all() or not hits.any():
            raise BenchmarkInputError(
                f"{NAME}: cell line {line}: {int(hits.sum())} of the {len(hits)} tested compounds are hits "
                "in "
                f"{GROUND_TRUTH}; ranking metrics need both hits and non-hits"
            )
        s = eff.to_numpy()
        rows.append(
            {
                "cell_line": line,
                "parental": "PAR" in line,
                "auc_roc": roc_auc(hits, s),
                "auc_pr": pr_auc(hits, s),
                "average_precision": average_precision(hits, s),
                "recall_at_50": recall_at_k(hits, s, 50),
                "recall_at_100": recall_at_k(hits, s, 100),
                "compounds": len(s),
                "hits": int(hits.sum()),
            }
        )
        effects.append(
            pd.DataFrame({"cell_line": line, "compound": eff.index, "effect_size": s, "hit": hits})
        )
    per_line = pd.DataFrame(rows)
    mutant = per_line[~per_line["parental"]]
    if mutant.empty:
        raise BenchmarkInputError(
            f"{NAME}: only parental (PAR) lines given; the averages are over mutant lines"
        )
    metrics = {m: float(mutant[m].mean()) for m in METRICS}
    metrics.update({f"{m}_all_lines": float(per_line[m].mean()) for m in METRICS})
    return BenchmarkResult(
        benchmark=NAME,
        headline="auc_roc",
        metrics=metrics,
        groups={"cell_lines": per_line, "effect_sizes": pd.concat(effects, ignore_index=True)},
        options={
            "fusion": fusion,
            "epsilon": epsilon,
            "min_controls": min_controls,
            "distance": "euclidean",
            "compound_match_column": NAME_COLUMN,
        },
        n={
            "patches": len(table),
            "images": len(images),
            "cell_lines": len(lines),
            "mutant_lines": len(mutant),
            "compounds_not_in_ground_truth": len(treated_names - set(gt.index)),
        },
        versions=library_versions(),
        provenance={
            "reference_tables": [table_record(reference_table(NAME, GROUND_TRUTH))],
            "wasserstein": "scipy.stats.wasserstein_distance",
        },
        plot=("cell_lines", "cell_line", "auc_roc"),
    )


def _line_effects(
    x: np.ndarray, images: pd.DataFrame, fusion: str, epsilon: float, min_controls: int, line: str
) -> pd.Series:
    """Effect size of every treated compound of one cell line (index: compound, sorted)."""
    plates = text_column(images, "plate")
    units = [np.ones(len(images), bool)] if fusion == "early" else [plates == p for p in np.unique(plates)]
    parts = []
    for unit in units:
        control = unit & images["control"].to_numpy(bool)
        where = f"cell line {line}" + ("" if fusion == "early" else f" plate {plates[unit][0]}")
        if control.sum() < min_controls:
            raise BenchmarkInputError(
                f"{NAME}: {where} has {int(control.sum())} control image(s); the effect size needs >= "
                f"{min_controls}"
            )
        mean, w = whiten_on_controls(x[control], epsilon)
        ctrl = (x[control] - mean) @ w
        baseline = pdist(ctrl)  # control-vs-control distances, shared by every compound of this unit
        treated = unit & ~control
        names = images["compound"].to_numpy()[treated]
        xt = (x[treated] - mean) @ w
        for name in np.unique(names):
            cross = cdist(xt[names == name], ctrl).ravel()
            parts.append((name, wasserstein(baseline, cross)))
    if not parts:
        raise BenchmarkInputError(f"{NAME}: cell line {line} has no treated image")
    eff = pd.DataFrame(parts, columns=["compound", "effect"]).groupby("compound")["effect"].mean()
    return eff.sort_index()
