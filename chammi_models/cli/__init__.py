"""The ``chammi`` command: one subcommand per module, loaded only when used.

Each subcommand module defines ``register(parser)`` (adds its arguments) and ``main(args) -> int``.
CLI modules stay thin: parse arguments, call one library function, print where the output went.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "export": ("chammi_data.cli.export", "write a release in the official CHAMMI layout (tape PNGs + enriched_meta.csv)"),
    "validate": ("chammi_data.cli.validate", "re-hash shards and check manifest vs shards vs zarr"),
    "eval": ("chammi_data.cli.evaluate", "score features with the official 1-NN protocol and the CPS"),
    "report": ("chammi_data.cli.report", "overlay several evaluated runs: radar plot + markdown table"),
    "train": ("chammi_models.cli.train", "train a channel-adaptive model on a release"),
    "embed": ("chammi_models.cli.embed", "write features of a trained model, row-aligned with the manifest"),
    "demo": ("chammi_models.cli.demo", "the whole system end to end on the embedded sample data"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chammi", description="CHAMMI toolkit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        importlib.import_module(module).register(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(importlib.import_module(args._module).main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
