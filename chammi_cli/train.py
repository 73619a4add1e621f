"""``chammi train``: train a model from a YAML config.

    chammi train --config configs/tiny_cpu.yaml --release RELEASE --out runs/tiny optim.lr=3e-3
    torchrun --nproc_per_node 4 -m chammi_models.training.train --config hypernet_finetune --out runs/hn

The arguments and the command belong to ``chammi_models.training.train``, which is also the torchrun entry
point, so both ways to start a run parse the same arguments; this module only plugs them into ``chammi``.
"""

from __future__ import annotations

import argparse


def register(parser: argparse.ArgumentParser) -> None:
    from chammi_models.training.train import add_arguments

    add_arguments(parser)


def main(args: argparse.Namespace) -> int:
    from chammi_models.training.train import run_command

    return run_command(args)
