"""JUMP-CP (CPJUMP1 compound plates): phenotypic activity and consistency with copairs mean average precision.

Scorer contract: ``score(features, table, **options) -> BenchmarkResult`` with ``features`` (N, D) float, one
row per cell, and ``table`` of N rows (row i <-> features[i]) with the columns

- ``plate`` (barcode, e.g. ``BR00117010``), ``well`` (e.g. ``A01``);
- ``broad_sample``: the compound's Broad id; for a negative-control well it may be empty or ``DMSO`` (both
  are accepted and read as DMSO); any other well must name its compound;
- ``pert_type`` (``trt`` | ``control``), ``control_type`` (``negcon`` for DMSO, ``poscon_*`` or empty);
- optional ``condition``: the group activity and consistency are computed in (default: the plate's cell
  type and time point from ``experiment-metadata.tsv``, e.g. ``U2OS_48h``; as the published evaluation,
  which scores each (cell type, time point) separately).

:func:`score_wells` scores ready-made well-level profiles (one row per well, the same columns) and shares
every step after the aggregation; the CellProfiler reference runs through it.

Protocol (issue 20, Chandrasekaran et al. 2024 with copairs): well profile = mean of its cells; all wells of
all plates spherized together on the negcon wells (ZCA-cor, epsilon 1e-3; features constant over the
controls are dropped and counted); then per condition:

- **activity**: each compound's replicate wells are the positives, the DMSO wells of the same plate the
  negatives (copairs ``average_precision`` with a reference index on DMSO, cosine similarity); copairs
  ``mean_average_precision`` per compound, null size 100,000, Benjamini-Hochberg FDR 0.05: a compound is
  active when its corrected p-value < 0.05. Every non-negcon compound is scored (positive controls too).
- **consistency**: the median profile of each active compound with a ``target_list`` in
  ``JUMP-Target-1_compound_metadata_additional_annotations.tsv``; compounds sharing a target are positives
  (copairs multilabel), others negatives; mAP per target, null size 20,000, FDR 0.05.

Metrics (pooled over conditions, each condition also in ``groups["conditions"]``): ``active_fraction``
(headline), ``fraction_p_below`` (uncorrected p), ``map_mean``, ``map_mean_active``, ``map_median``,
``consistency_retrieved_fraction``, ``consistency_map_mean``, counts. Every random choice is the copairs
null, seeded by ``seed``: a rerun gives identical numbers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from chammi_data.evaluation.benchmarks.base import (
    BenchmarkInputError,
    BenchmarkResult,
    check_constant_within,
    check_features,
    group_mean,
    library_versions,
    reference_table,
    require_columns,
    table_record,
    text_column,
)
from chammi_data.evaluation.benchmarks.metrics import spherize as spherize_profiles

NAME = "jumpcp"
COLUMNS = ("plate", "well", "broad_sample", "pert_type", "control_type")
#: The 7 CPJUMP1 compound plates of the benchmark.
PLATES = ("BR00117010", "BR00117011", "BR00117012", "BR00117013", "BR00117024", "BR00117025", "BR00117026")
ANNOTATIONS = "JUMP-Target-1_compound_metadata_additional_annotations.tsv"
EXPERIMENTS = "experiment-metadata.tsv"
NEGCON = "negcon"
DMSO = "DMSO"


def score(
    features: Any,
    table: pd.DataFrame,
    *,
    null_size: int = 100_000,
    consistency_null_size: int = 20_000,
    threshold: float = 0.05,
    seed: int = 0,
    spherize: bool = True,
    spherize_epsilon: float = 1e-3,
    distance: str = "cosine",
) -> BenchmarkResult:
    """Score cell-level features: well profile = mean of the well's cells, then :func:`score_wells`."""
    x = check_features(features, table, NAME)
    require_columns(table, ("plate", "well", "pert_type"), NAME)
    _require_present(table)
    check_constant_within(
        table, ("plate", "well"), [c for c in (*COLUMNS[2:], "condition") if c in table], NAME
    )
    profiles, wells, counts = group_mean(x, table, ("plate", "well"))
    result = score_wells(
        profiles,
        wells,
        null_size=null_size,
        consistency_null_size=consistency_null_size,
        threshold=threshold,
        seed=seed,
        spherize=spherize,
        spherize_epsilon=spherize_epsilon,
        distance=distance,
    )
    result.n.update(
        cells=len(table), cells_per_well_min=int(counts.min()), cells_per_well_max=int(counts.max())
    )
    return result


def _require_present(table: pd.DataFrame) -> None:
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise BenchmarkInputError(
            f"{NAME}: table lacks column(s) {', '.join(missing)}; required: {', '.join(COLUMNS)}"
        )


def score_wells(
    profiles: Any,
    wells: pd.DataFrame,
    *,
    null_size: int = 100_000,
    consistency_null_size: int = 20_000,
    threshold: float = 0.05,
    seed: int = 0,
    spherize: bool = True,
    spherize_epsilon: float = 1e-3,
    distance: str = "cosine",
) -> BenchmarkResult:
    """Score well-level profiles (W, D), one row of ``wells`` per well (columns as :func:`score`)."""
    x = check_features(profiles, wells, NAME)
    require_columns(wells, ("plate", "well", "pert_type"), NAME)
    _require_present(wells)
    meta = _well_meta(wells)
    dropped = 0
    if spherize:
        x, keep = spherize_profiles(x, meta["negcon"].to_numpy(), spherize_epsilon)
        dropped = int((~keep).sum())
    activity, consistency, cond_rows = [], [], []
    for cond in sorted(meta["condition"].unique()):
        rows = np.flatnonzero(meta["condition"].to_numpy() == cond)
        act = _activity(x[rows], meta.iloc[rows].reset_index(drop=True), null_size, threshold, seed, distance)
        act.insert(0, "condition", cond)
        cons = _consistency(
            x[rows],
            meta.iloc[rows].reset_index(drop=True),
            act,
            consistency_null_size,
            threshold,
            seed,
            distance,
        )
        cons.insert(0, "condition", cond)
        activity.append(act)
        consistency.append(cons)
        cond_rows.append(
            {"condition": cond, **_summary(act, cons), "plates": int(meta.iloc[rows]["plate"].nunique())}
        )
    act_all = pd.concat(activity, ignore_index=True)
    cons_all = pd.concat(consistency, ignore_index=True)
    metrics = _summary(act_all, cons_all)
    targets = reference_table(NAME, ANNOTATIONS)
    return BenchmarkResult(
        benchmark=NAME,
        headline="active_fraction",
        metrics=metrics,
        groups={"conditions": pd.DataFrame(cond_rows), "activity": act_all, "consistency": cons_all},
        options=dict(
            null_size=null_size,
            consistency_null_size=consistency_null_size,
            threshold=threshold,
            seed=seed,
            spherize=spherize,
            spherize_epsilon=spherize_epsilon,
            spherize_method="ZCA-cor on negcon wells of all plates",
            distance=distance,
        ),
        n={
            "wells": len(wells),
            "negcon_wells": int(meta["negcon"].sum()),
            "features": int(x.shape[1]),
            "features_dropped_constant_in_controls": dropped,
            "conditions": len(cond_rows),
        },
        versions=library_versions(),
        provenance={
            "reference_tables": [table_record(targets), table_record(reference_table(NAME, EXPERIMENTS))]
        },
        plot=("conditions", "condition", "active_fraction"),
    )


def _summary(act: pd.DataFrame, cons: pd.DataFrame) -> dict[str, float]:
    active = act["active"].to_numpy(bool)
    maps = act["mean_average_precision"].to_numpy(float)
    return {
        "active_fraction": float(active.mean()) if len(act) else float("nan"),
        "fraction_p_below": float(act["below_p"].mean()) if len(act) else float("nan"),
        "map_mean": float(maps.mean()) if len(act) else float("nan"),
        "map_mean_active": float(maps[active].mean()) if active.any() else float("nan"),
        "map_median": float(np.median(maps)) if len(act) else float("nan"),
        "compounds": float(len(act)),
        "active_compounds": float(active.sum()),
        "consistency_retrieved_fraction": float(cons["retrieved"].mean()) if len(cons) else float("nan"),
        "consistency_map_mean": float(cons["mean_average_precision"].mean()) if len(cons) else float("nan"),
        "consistency_targets": float(len(cons)),
    }


def _well_meta(wells: pd.DataFrame) -> pd.DataFrame:
    """plate, well, compound (DMSO for negcon), negcon flag and condition of every well; checks the layout."""
    plate, well = text_column(wells, "plate"), text_column(wells, "well")
    key = pd.Series(plate) + "/" + pd.Series(well)
    dup = np.flatnonzero(key.duplicated().to_numpy())
    if len(dup):
        raise BenchmarkInputError(
            f"{NAME}: well {key[dup[0]]} appears twice in the well table (row {int(dup[0])})"
        )
    control = wells["control_type"].fillna("").astype(str).to_numpy()
    sample = wells["broad_sample"].fillna("").astype(str).str.strip().to_numpy()
    negcon = control == NEGCON
    bad_neg = np.flatnonzero(negcon & ~np.isin(sample, ["", DMSO]))
    if len(bad_neg):
        r = int(bad_neg[0])
        raise BenchmarkInputError(
            f"{NAME}: well {key[r]} is negcon but broad_sample is {sample[r]!r}; expected empty or DMSO"
        )
    bad_trt = np.flatnonzero(~negcon & np.isin(sample, ["", DMSO]))
    if len(bad_trt):
        r = int(bad_trt[0])
        raise BenchmarkInputError(
            f"{NAME}: well {key[r]} has broad_sample {sample[r]!r} but control_type {control[r]!r}; "
            "DMSO wells need control_type negcon"
        )
    for p in np.unique(plate):
        if (negcon & (plate == p)).sum() < 2:
            raise BenchmarkInputError(
                f"{NAME}: plate {p} has {(negcon & (plate == p)).sum()} negcon (DMSO) well(s); activity "
                "compares "
                "each compound with the DMSO wells of its own plate and needs at least 2"
            )
    compound = np.where(negcon, DMSO, sample)
    return pd.DataFrame(
        {
            "plate": plate,
            "well": well,
            "compound": compound,
            "negcon": negcon,
            "pert_type": text_column(wells, "pert_type"),
            "condition": _conditions(wells, plate),
        }
    )


def _conditions(wells: pd.DataFrame, plate: np.ndarray) -> np.ndarray:
    if "condition" in wells.columns:
        require_columns(wells, ("condition",), NAME)
        return text_column(wells, "condition")
    exp = pd.read_csv(reference_table(NAME, EXPERIMENTS), sep="\t", dtype=str)
    names = dict(zip(exp["Assay_Plate_Barcode"], exp["Cell_type"] + "_" + exp["Time"] + "h", strict=True))
    unknown = sorted(set(plate) - set(names))
    if unknown:
        raise BenchmarkInputError(
            f"{NAME}: plate {unknown[0]} is not in {EXPERIMENTS}; give the table a condition column "
            "(cell type and time point) to score other plates"
        )
    return np.array([names[p] for p in plate])


def _copairs() -> Any:
    """copairs' map module (imported late: it pulls in duckdb and statsmodels), its logger quiet."""
    try:
        from copairs import map as copairs_map
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError(
            f"the jumpcp benchmark needs copairs==0.5.1 (pip install 'chammi[benchmarks]'): {exc}"
        ) from exc
    logging.getLogger("copairs").setLevel(logging.WARNING)
    return copairs_map


def _object_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """Text columns as object dtype: duckdb < 1.4 (copairs 0.5.1's pair finder) rejects pandas' str dtype."""
    return frame.astype({c: object for c in frame.columns if frame[c].dtype != np.int64})


def _activity(
    x: np.ndarray, meta: pd.DataFrame, null_size: int, threshold: float, seed: int, distance: str
) -> pd.DataFrame:
    """mAP of each compound's replicates against the same plate's DMSO wells; one row per compound."""
    cmap = _copairs()
    frame = meta[["plate", "compound"]].copy()
    # DMSO wells get their own index as reference: they are never positives of each other, and a compound
    # well (index -1) pairs negatively only with them (different compound AND different reference).
    frame["reference"] = np.where(meta["negcon"].to_numpy(), np.arange(len(meta)), -1)
    cols = dict(
        pos_sameby=["compound", "reference"],
        pos_diffby=[],
        neg_sameby=["plate"],
        neg_diffby=["compound", "reference"],
    )
    ap = cmap.average_precision(_object_columns(frame), x, distance=distance, **cols)
    scored = ap[~meta["negcon"].to_numpy()]
    lonely = scored.loc[scored["n_pos_pairs"] == 0, "compound"].unique()
    maps = cmap.mean_average_precision(
        ap, sameby=["compound"], null_size=null_size, threshold=threshold, seed=seed
    )
    maps = maps.drop(columns=["indices"], errors="ignore").rename(columns={"below_corrected_p": "active"})
    types = meta.drop_duplicates("compound").set_index("compound")["pert_type"]
    maps.insert(1, "pert_type", types.reindex(maps["compound"]).to_numpy())
    maps["replicates"] = maps["compound"].map(meta["compound"].value_counts()).astype(int)
    if len(lonely):
        # A compound with one well has no replicate to retrieve: listed, never active, mAP NaN.
        extra = pd.DataFrame(
            {
                "compound": lonely,
                "pert_type": types.reindex(lonely).to_numpy(),
                "active": False,
                "below_p": False,
                "replicates": 1,
            }
        )
        maps = pd.concat([maps, extra], ignore_index=True)
    return maps.sort_values("compound", kind="stable").reset_index(drop=True)


def target_lists() -> dict[str, list[str]]:
    """{broad_sample: [targets]} from the JUMP-Target-1 annotations (compounds without targets omitted)."""
    ann = pd.read_csv(
        reference_table(NAME, ANNOTATIONS), sep="\t", usecols=["broad_sample", "target_list"]
    ).dropna()
    return {
        b: sorted(set(t.split("|"))) for b, t in zip(ann["broad_sample"], ann["target_list"], strict=True)
    }


def _consistency(
    x: np.ndarray,
    meta: pd.DataFrame,
    activity: pd.DataFrame,
    null_size: int,
    threshold: float,
    seed: int,
    distance: str,
) -> pd.DataFrame:
    """mAP of retrieving active compounds that share a target (median profiles); one row per target."""
    empty = pd.DataFrame(
        columns=["target", "mean_average_precision", "p_value", "corrected_p_value", "retrieved", "compounds"]
    )
    targets = target_lists()
    active = [c for c in activity.loc[activity["active"].astype(bool), "compound"] if c in targets]
    if len(active) < 2:
        return empty
    rows = meta["compound"].isin(active).to_numpy()
    codes, names = pd.factorize(meta.loc[rows, "compound"])
    consensus = np.stack([np.median(x[rows][codes == k], axis=0) for k in range(len(names))])
    frame = pd.DataFrame({"compound": names, "target": [targets[c] for c in names]})
    cmap = _copairs()
    from copairs.matching import UnpairedException

    try:
        ap = cmap.multilabel.average_precision(
            _object_columns(frame),
            consensus,
            pos_sameby=["target"],
            pos_diffby=[],
            neg_sameby=[],
            neg_diffby=["target"],
            multilabel_col="target",
            distance=distance,
        )
    except UnpairedException:
        return empty  # no two active compounds share a target
    ap = ap[ap["n_pos_pairs"] > 0]
    if ap.empty:
        return empty
    maps = cmap.mean_average_precision(
        ap, sameby=["target"], null_size=null_size, threshold=threshold, seed=seed
    )
    maps = maps.drop(columns=["indices"], errors="ignore").rename(columns={"below_corrected_p": "retrieved"})
    maps["compounds"] = maps["target"].map(ap.groupby("target").size()).astype(int)
    return maps.sort_values("target", kind="stable").reset_index(drop=True)


def load_cellprofiler_profiles(
    paths: Sequence[str], drop: Sequence[str] = ("ZBF", "Brightfield")
) -> tuple[np.ndarray, pd.DataFrame, list[str]]:
    """Well profiles from CellProfiler CSVs (``Metadata_*`` then features): (W, D) float64, the well table
    with the :data:`COLUMNS` of :func:`score_wells`, and the feature names kept (names containing any of
    ``drop``, the brightfield features, are removed)."""
    frame = pd.concat([pd.read_csv(p, low_memory=False) for p in paths], ignore_index=True)
    features = [c for c in frame.columns if not c.startswith("Metadata") and not any(d in c for d in drop)]
    wells = pd.DataFrame(
        {
            "plate": frame["Metadata_Plate"].astype(str),
            "well": frame["Metadata_Well"].astype(str),
            "broad_sample": frame["Metadata_broad_sample"],
            "pert_type": frame["Metadata_pert_type"],
            "control_type": frame["Metadata_control_type"],
        }
    )
    return frame[features].to_numpy(np.float64), wells, features
