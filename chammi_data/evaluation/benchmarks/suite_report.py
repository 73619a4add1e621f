"""The suite side by side: several models' benchmark results in one table and one radar (``chammi report``).

A model's results folder is what ``chammi eval --benchmark NAME --out DIR`` wrote: ``DIR/results.json`` of
one benchmark, or a folder whose subfolders each hold one (``RESULTS/<benchmark>/results.json``, the layout
of ``chammi eval --benchmark ... --out RESULTS/<benchmark>``). Each benchmark contributes its headline metric
(CPS, mean cross-site accuracy, AUC-ROC, LR F1, active fraction, micro-AP: all in 0..1, so one radar
holds them); a benchmark a model was not scored on is "n/a".
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from chammi_data.evaluation.benchmarks.registry import get_benchmark, list_benchmarks
from chammi_data.evaluation.plots import draw_radar

RESULTS_JSON = "results.json"


def is_benchmark_result(data: Mapping[str, Any]) -> bool:
    """True for a results.json written by ``write_result`` (a benchmark result), not by the CHAMMI-only
    ``chammi eval``."""
    return "benchmark" in data and "headline" in data


def read_result(path: Path) -> dict[str, Any]:
    """A benchmark results.json, with a one-line error when it is unreadable or not one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not readable JSON ({exc})") from None
    if not isinstance(data, dict) or not is_benchmark_result(data):
        raise ValueError(f"{path} is not a benchmark result (written by chammi eval --benchmark NAME)")
    get_benchmark(str(data["benchmark"]))  # an unknown benchmark name is an error listing the valid ones
    return data


def model_results(folder: str | Path) -> dict[str, dict[str, Any]]:
    """{benchmark: result} of one model's results folder (see the module docstring)."""
    root = Path(folder)
    files = (
        [root / RESULTS_JSON] if (root / RESULTS_JSON).is_file() else sorted(root.glob(f"*/{RESULTS_JSON}"))
    )
    if not files:
        raise FileNotFoundError(
            f"{root} holds no {RESULTS_JSON} (nor any */{RESULTS_JSON}): run chammi eval --benchmark NAME "
            f"--out {root}/NAME first"
        )
    out: dict[str, dict[str, Any]] = {}
    for f in files:
        data = read_result(f)
        name = str(data["benchmark"])
        if name in out:
            raise ValueError(f"{root}: two results of benchmark {name} ({f})")
        out[name] = data
    return out


def suite_table(runs: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> pd.DataFrame:
    """One row per model, one column per benchmark (registry order, those any model has): the headline
    value (NaN where a model was not scored); ``attrs["headlines"]`` names each column's metric."""
    present = [b for b in list_benchmarks() if any(b in r for r in runs.values())]
    rows = []
    for model, results in runs.items():
        row: dict[str, Any] = {"model": model}
        for b in present:
            value = (results.get(b) or {}).get("headline", {}).get("value")
            row[b] = float("nan") if value is None else float(value)
        rows.append(row)
    table = pd.DataFrame(rows, columns=["model", *present])
    table.attrs["headlines"] = {b: get_benchmark(b).headline for b in present}
    return table


def suite_markdown(table: pd.DataFrame, runs: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """The suite table as markdown, with each benchmark's metric and the options that differ between
    models noted below."""
    benches = [c for c in table.columns if c != "model"]
    heads = table.attrs.get("headlines", {})
    lines = [
        "# CHAMMI-75 benchmark suite",
        "",
        "Headline metric per benchmark (higher is better): "
        + "; ".join(f"{b}: {heads.get(b, '')}" for b in benches)
        + ".",
        "",
        "| model | " + " | ".join(benches) + " |",
        "|---|" + "---:|" * len(benches),
    ]
    for rec in table.to_dict(orient="records"):
        cells = ["n/a" if math.isnan(rec[b]) else f"{rec[b]:.3f}" for b in benches]
        lines.append(f"| {rec['model']} | " + " | ".join(cells) + " |")
    notes = []
    for b in benches:
        seen = {json.dumps(r[b].get("options", {}), sort_keys=True) for r in runs.values() if b in r}
        if len(seen) > 1:
            notes.append(f"- {b}: the models were scored with different options; compare with care.")
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def suite_radar(table: pd.DataFrame, path: str | Path) -> Path:
    """A radar across the table's benchmarks, one polygon per model."""
    benches = [c for c in table.columns if c != "model"]
    heads = table.attrs.get("headlines", {})
    labels = [f"{b}\n({heads.get(b, '')})" for b in benches]
    series = {str(r["model"]): np.array([r[b] for b in benches], dtype=float) for _, r in table.iterrows()}
    return draw_radar(labels, series, path, "CHAMMI-75 benchmark suite: headline metric", "benchmark(s)")
