"""``chammi demo``: sample data -> release -> train -> embed -> evaluate -> report (see
chammi_cli.demo_run); ``--dataset chammi75``: the CHAMMI-75 path (chammi_cli.demo_chammi75)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", type=Path, default=Path("demo_out"), help="output folder (default: demo_out)"
    )
    parser.add_argument(
        "--dataset",
        choices=["chammi", "chammi75"],
        default="chammi",
        help="chammi: the three CHAMMI sources, scored (default); chammi75: the CHAMMI-75 sample, built from "
        "its published layout and trained without labels",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample data and of training")
    parser.add_argument("--workers", type=int, default=2, help="dask workers for the build")
    parser.add_argument("--metric", choices=["cosine", "l2"], default="cosine")
    parser.add_argument("--quick", action="store_true", help="train a handful of steps only (smoke test)")
    parser.add_argument(
        "overrides", nargs="*", help="training config overrides key=value (configs/tiny_cpu.yaml)"
    )


def main(args: argparse.Namespace) -> int:
    from chammi_cli.demo_run import run_demo
    from chammi_data.errors import UserError

    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out {args.out} is a file, not a folder")
    if args.dataset == "chammi75":
        from chammi_cli.demo_chammi75 import run_chammi75_demo

        options = {name: getattr(args, name) for name in ("seed", "workers", "quick", "overrides")}
        res75 = run_chammi75_demo(args.out, **options)
        losses = res75["losses"]
        print(f"CHAMMI-75: {len(losses)} training steps, SimCLR loss {losses[0]:.3f} -> {losses[-1]:.3f}")
        print(f"report: {res75['report'].resolve()}")
        return 0
    options = {name: getattr(args, name) for name in ("seed", "workers", "quick", "overrides", "metric")}
    res = run_demo(args.out, **options)
    t, b = res.scores.get("trained"), res.scores.get("baseline")
    print(f"CPS ({args.metric}): trained {t:.3f}  vs  untrained ChannelReplication baseline {b:.3f}")
    if not args.quick and not res.trained_beats_baseline:
        print("warning: the trained model did not beat the baseline on this sample")
    print(f"report: {res.report.resolve()}")
    return 0
