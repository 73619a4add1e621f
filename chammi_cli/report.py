"""``chammi report``: overlay several ``chammi eval`` runs in one radar plot and one markdown table with
CPS."""

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
        "runs", nargs="+", type=Path, help="run folders written by `chammi eval` (each has results.json)"
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
    runs = {n: load_run(Path(r)) for n, r in zip(names, args.runs, strict=True)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    radar_plot({n: d["table"] for n, d in runs.items()}, out / "radar.png", title="macro-F1 per task")
    report = markdown_report(runs)
    (out / "report.md").write_text(report, encoding="utf-8")
    print(report)
    print(f"wrote {out / 'radar.png'}, {out / 'report.md'}")
    return 0
