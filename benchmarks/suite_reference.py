"""The JUMP-CP CellProfiler reference: the jumpcp scorer on the CellProfiler profiles of the 7 CPJUMP1 plates.

Reads ``shared/data/chammi75-benchmarks/jumpcp/cellprofiler/*_normalized_feature_select_negcon_batch.csv.gz``
(well-level, normalised and feature-selected; brightfield features, names with ``ZBF`` or ``Brightfield``,
dropped), runs :func:`chammi_data.evaluation.benchmarks.jumpcp.score_wells` with the protocol's defaults
(spherize on DMSO, ZCA-cor eps 1e-3; activity null 100,000; consistency null 20,000; FDR 0.05; seed 0) and
writes ``benchmarks/results/jumpcp_cellprofiler.md`` and ``.json`` (plus the full per-compound and
per-target tables as ``jumpcp_cellprofiler_activity.csv`` / ``_consistency.csv``). Also checks that a
second run gives identical numbers.

    python benchmarks/suite_reference.py            # about half a minute on 2 cores
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from chammi_data.evaluation.benchmarks import jumpcp
from chammi_data.evaluation.benchmarks.base import to_jsonable

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[1] / "shared/data/chammi75-benchmarks/jumpcp/cellprofiler"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of the 7 CellProfiler CSVs")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    paths = [args.data / f"{p}_normalized_feature_select_negcon_batch.csv.gz" for p in jumpcp.PLATES]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise SystemExit(f"missing CellProfiler profiles: {', '.join(missing)}")
    x, wells, names = jumpcp.load_cellprofiler_profiles([str(p) for p in paths])
    start = time.perf_counter()
    result = jumpcp.score_wells(x, wells)
    seconds = time.perf_counter() - start
    again = jumpcp.score_wells(x, wells)
    identical = all(
        (np.isnan(v) and np.isnan(again.metrics[k])) or v == again.metrics[k]
        for k, v in result.metrics.items()
    )
    args.out.mkdir(parents=True, exist_ok=True)
    record = result.to_dict()
    record.pop("groups")
    record.update(
        seconds=round(seconds, 2),
        rerun_identical=identical,
        input={"files": [p.name for p in paths], "wells": int(x.shape[0]), "features_kept": len(names)},
        conditions=to_jsonable(result.groups["conditions"].to_dict(orient="records")),
    )
    (args.out / "jumpcp_cellprofiler.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    result.groups["activity"].to_csv(args.out / "jumpcp_cellprofiler_activity.csv", index=False)
    result.groups["consistency"].to_csv(args.out / "jumpcp_cellprofiler_consistency.csv", index=False)
    (args.out / "jumpcp_cellprofiler.md").write_text(_markdown(result, record), encoding="utf-8")
    print(json.dumps({k: record[k] for k in ("metrics", "seconds", "rerun_identical")}, indent=2))


def _markdown(result: jumpcp.BenchmarkResult, record: dict) -> str:
    m = result.metrics
    cond = result.groups["conditions"]
    act = result.groups["activity"]
    lines = [
        "# JUMP-CP: the CellProfiler reference (`benchmarks/suite_reference.py`)",
        "",
        "CellProfiler well profiles of the 7 CPJUMP1 compound plates (U2OS; BR00117010-13 at 48 h, "
        "BR00117024-26 at 24 h), as published with the CHAMMI-75 benchmarks (normalised and "
        "feature-selected; "
        f"{record['input']['features_kept']} features after dropping the brightfield ones), scored by "
        "`chammi_data.evaluation.benchmarks.jumpcp.score_wells`: all 2,688 wells spherized together on "
        "the 448 DMSO wells (ZCA-cor, epsilon 1e-3, our numpy implementation, equal to pycytominer's to "
        "1e-6), then "
        "per condition (cell type, time point) copairs 0.5.1 mAP with cosine similarity. Activity: each "
        "compound's replicate wells vs the DMSO wells of the same plate, null size 100,000, "
        "Benjamini-Hochberg FDR 0.05. Consistency: median profiles of the active compounds, compounds "
        "sharing "
        "a target (JUMP-Target-1 `target_list`) as positives, null size 20,000, FDR 0.05. Seed 0.",
        "",
        "| condition | plates | compounds | active | active fraction | fraction p<0.05 (uncorrected) "
        "| mAP mean | mAP mean (active) | mAP median | targets scored | consistency: fraction retrieved "
        "| consistency mAP |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in cond.to_dict(orient="records"):
        lines.append(
            f"| {r['condition']} | {r['plates']} | {r['compounds']:.0f} | {r['active_compounds']:.0f} | "
            f"{r['active_fraction']:.4f} | {r['fraction_p_below']:.4f} | {r['map_mean']:.4f} | "
            f"{r['map_mean_active']:.4f} | {r['map_median']:.4f} | {r['consistency_targets']:.0f} | "
            f"{r['consistency_retrieved_fraction']:.4f} | {r['consistency_map_mean']:.4f} |"
        )
    lines.append(
        f"| **both (pooled)** | 7 | {m['compounds']:.0f} | {m['active_compounds']:.0f} | "
        f"**{m['active_fraction']:.4f}** | {m['fraction_p_below']:.4f} | {m['map_mean']:.4f} | "
        f"{m['map_mean_active']:.4f} | {m['map_median']:.4f} | {m['consistency_targets']:.0f} | "
        f"**{m['consistency_retrieved_fraction']:.4f}** | {m['consistency_map_mean']:.4f} |"
    )
    by_type = act.groupby("pert_type")["active"].agg(["mean", "size"])
    lines += [
        "",
        "Active fraction by perturbation type (pooled): "
        + ", ".join(f"{k} {v['mean']:.4f} of {int(v['size'])}" for k, v in by_type.iterrows())
        + " (positive controls are scored like every compound, as in the published evaluation).",
        "",
        f"Scoring time {record['seconds']} s on this machine (2 cores); a second run gave identical numbers: "
        f"{record['rerun_identical']}. Versions: copairs {record['versions']['copairs']}, numpy "
        f"{record['versions']['numpy']}, scikit-learn {record['versions']['scikit-learn']}.",
        "",
        "Full tables: `jumpcp_cellprofiler_activity.csv` (one row per condition and compound: mAP, p-value, "
        "corrected p-value, active) and `jumpcp_cellprofiler_consistency.csv` (one row per condition and "
        "target). Machine-readable summary: `jumpcp_cellprofiler.json`.",
        "",
        "Not comparable one to one with the CHAMMI-75 paper's JUMP-CP numbers: those are for learned "
        "embeddings (this is the CellProfiler baseline), and the paper's tables do not state whether they "
        "pool conditions. The protocol is the one of issue 20; the conditions are kept apart as in the "
        "published evaluation script.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
