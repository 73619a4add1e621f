"""``chammi report``: overlay several ``chammi eval`` runs in one radar plot and one markdown table with
CPS; for results of ``chammi eval --benchmark`` the CHAMMI-75 suite side by side (one row per model, one
column per benchmark, a radar across benchmarks: ``chammi_data.evaluation.benchmarks.suite_report``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from chammi_data.errors import UserError

#: Column headers of the markdown table, in radar-axis order.
_HEADERS = ("W1", "W2", "H1", "H2", "H3", "C1", "C2", "C3", "C4")


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "runs",
        nargs="+",
        type=Path,
        help="run folders written by `chammi eval` (each has results.json); or one results folder per model "
        "of `chammi eval --benchmark` (RESULTS/<benchmark>/results.json): the suite report",
    )
    parser.add_argument(
        "--names", nargs="+", default=None, help="one display name per run (default: run folder names)"
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder for radar.png and report.md")


def load_run(run: Path) -> dict[str, Any]:
    """The parsed results.json of a run folder, with a clear error when it is missing or malformed."""
    path = run / "results.json" if run.is_dir() else run
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `chammi eval ... --out {run}` first")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{path} is not valid JSON ({exc}): not a results.json written by `chammi eval`"
        ) from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a JSON object: not a results.json written by `chammi eval`")
    for key in ("table", "metric", "classifier"):
        if key not in data:
            raise ValueError(f"{path} lacks `{key}`: not a results.json written by `chammi eval`")
    return data


def markdown_report(runs: dict[str, dict[str, Any]]) -> str:
    """A markdown table: one row per model, per-task macro-F1 (W1..C4), CPS, classifier and metric."""
    from chammi_data.evaluation.plots import task_scores

    lines = [
        "# CHAMMI results",
        "",
        "Macro-F1 per task (W = WTC-11/Allen, H = HPA, C = Cell Painting; task 1 is IID, the rest OOD).",
        "CPS = W2/3 + (H2+H3)/6 + (C2+C3+C4)/9.",
        "",
        "| model | classifier | metric | " + " | ".join(_HEADERS) + " | CPS |",
        "|---|---|---|" + "---:|" * (len(_HEADERS) + 1),
    ]
    for name, data in runs.items():
        scores = task_scores(data["table"])
        cells = ["n/a" if np.isnan(v) else f"{v:.3f}" for v in scores]
        cps = "n/a" if data.get("cps") is None else f"{data['cps']:.3f}"
        lines.append(
            f"| {name} | {data['classifier']} | {data['metric']} | " + " | ".join(cells) + f" | **{cps}** |"
        )
    metrics = {d["metric"] for d in runs.values()}
    if len(metrics) > 1:
        lines += [
            "",
            f"Note: the runs use different metrics ({', '.join(sorted(metrics))}); their scores are not "
            "comparable.",
        ]
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> int:
    from chammi_data.evaluation.plots import radar_plot

    if args.names is not None and len(args.names) != len(args.runs):
        raise UserError(f"--names gives {len(args.names)} names for {len(args.runs)} runs")
    names = args.names or [Path(r).resolve().name for r in args.runs]
    if len(set(names)) != len(names):
        raise UserError(f"run names must be unique, got {names}: pass --names")
    if all(_is_suite(Path(r)) for r in args.runs):
        return _suite_report(dict(zip(names, args.runs, strict=True)), Path(args.out))
    runs = {n: load_run(Path(r)) for n, r in zip(names, args.runs, strict=True)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    radar_plot({n: d["table"] for n, d in runs.items()}, out / "radar.png", title="macro-F1 per task")
    report = markdown_report(runs)
    (out / "report.md").write_text(report, encoding="utf-8")
    print(report)
    print(f"wrote {out / 'radar.png'}, {out / 'report.md'}")
    return 0


def _is_suite(run: Path) -> bool:
    """True for a results folder of ``chammi eval --benchmark`` (its results.json, or its subfolders', are
    benchmark results)."""
    from chammi_data.evaluation.benchmarks.suite_report import is_benchmark_result

    files = [run / "results.json"] if (run / "results.json").is_file() else sorted(run.glob("*/results.json"))
    try:
        return bool(files) and all(
            is_benchmark_result(json.loads(f.read_text(encoding="utf-8"))) for f in files
        )
    except (OSError, json.JSONDecodeError):
        return False


def _suite_report(runs: dict[str, Path], out: Path) -> int:
    """The CHAMMI-75 suite side by side: ``suite.md`` (table) and ``suite_radar.png``."""
    from chammi_data.evaluation.benchmarks.suite_report import (
        model_results,
        suite_markdown,
        suite_radar,
        suite_table,
    )

    results = {name: model_results(folder) for name, folder in runs.items()}
    table = suite_table(results)
    out.mkdir(parents=True, exist_ok=True)
    report = suite_markdown(table, results)
    (out / "suite.md").write_text(report, encoding="utf-8")
    table.to_csv(out / "suite.csv", index=False)
    suite_radar(table, out / "suite_radar.png")
    print(report)
    print(f"wrote {out / 'suite.md'}, {out / 'suite.csv'}, {out / 'suite_radar.png'}")
    return 0
