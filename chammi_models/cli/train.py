"""``chammi train``: train a model from a YAML config (also the argument parser of the torchrun entry point).

    chammi train --config configs/tiny_cpu.yaml --release RELEASE --out runs/tiny optim.lr=3e-3
    torchrun --nproc_per_node 4 -m chammi_models.train --config configs/hypernet_finetune.yaml --out runs/hn
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True,
                        help="YAML config file, or the name of a bundled one (configs/<name>.yaml), e.g. tiny_cpu")
    parser.add_argument("--release", type=Path, default=None,
                        help="release folder (default: $CHAMMI_RELEASE or ~/.cache/chammi/release)")
    parser.add_argument("--out", type=Path, default=None, help="run folder (default: runs/<config name>)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    parser.add_argument("--stop-after", type=int, default=None, metavar="STEPS",
                        help="stop with a checkpoint after this many steps (the schedule still plans the full run)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides with dotted keys, e.g. optim.lr=3e-4 data.batch_size=64")


def main(args: argparse.Namespace) -> int:
    from chammi_data.paths import default_release_dir
    from chammi_models.config import load_config
    from chammi_models.train import train

    try:
        config = load_config(args.config, args.overrides)
    except (KeyError, ValueError, FileNotFoundError) as exc:  # a config mistake: one line, no traceback
        print(f"chammi train: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    release = args.release or default_release_dir()
    out = args.out or Path("runs") / config.name
    result = train(config, release, out, resume=args.resume, stop_after=args.stop_after)
    if int(os.environ.get("RANK", "0")) == 0:
        state = "finished" if result.finished else f"stopped at step {result.step} of {result.total_steps}"
        print(f"run {config.name}: {state}; run folder {result.run_dir}")
        if result.weights_dir is not None:
            print(f"weights: {result.weights_dir}")
        if result.scores is not None:
            cps = result.scores["cps"]
            print(f"CPS ({result.scores['metric']}): {'n/a (not all sources evaluated)' if cps is None else f'{cps:.4f}'}")
    return 0
