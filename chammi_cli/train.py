"""``chammi train``: train a model from a YAML config, on one process or under torchrun.

    chammi train --config tiny_cpu --release RELEASE --out runs/tiny optim.lr=3e-3
    torchrun --nproc_per_node 4 -m chammi_cli train --config hypernet_finetune --out runs/hn

Under torchrun every rank runs this command (``python -m chammi_cli train``); rank 0 prints where the results
are, and the process group is destroyed at the end whatever happened.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def register(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``chammi train``."""
    parser.add_argument(
        "--config",
        required=True,
        help="the name of a bundled config (e.g. tiny_cpu, hypernet_tps; see configs/) or a YAML file",
    )
    parser.add_argument(
        "--release",
        default=None,
        help="release folder or URL (s3://, gs://, http(s)://, file://; default: $CHAMMI_RELEASE or "
        "~/.cache/chammi/release)",
    )
    parser.add_argument("--out", type=Path, default=None, help="run folder (default: runs/<config name>)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    parser.add_argument(
        "--stop-after",
        type=int,
        default=None,
        metavar="STEPS",
        help="stop with a checkpoint after this many steps (the schedule still plans the full run)",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides with dotted keys, e.g. optim.lr=3e-4 data.batch_size=64",
    )


def main(args: argparse.Namespace) -> int:
    """Load the config, train, and print where the results are (rank 0)."""
    from chammi_models.training.config import load_config
    from chammi_models.training.distributed import shutdown_distributed
    from chammi_models.training.train import train

    try:
        config = load_config(args.config, args.overrides)
        out = args.out or Path("runs") / config.name
        result = train(config, args.release, out, resume=args.resume, stop_after=args.stop_after)
    finally:
        shutdown_distributed()
    if int(os.environ.get("RANK", "0")) == 0:
        state = "finished" if result.finished else f"stopped at step {result.step} of {result.total_steps}"
        print(f"run {config.name}: {state}; run folder {result.run_dir}")
        if result.weights_dir is not None:
            print(f"weights: {result.weights_dir}")
        if result.scores is not None:
            cps = result.scores["cps"]
            print(
                f"CPS ({result.scores['metric']}): "
                f"{'n/a (not all sources evaluated)' if cps is None else f'{cps:.4f}'}"
            )
    return 0
