"""The ``chammi`` command: one subcommand per module, loaded only when used.

The data library declares its own subcommands (``chammi_cli.data_commands.SUBCOMMANDS``); this package adds
the model ones and dispatches. Each subcommand module defines ``register(parser)`` (adds its arguments) and
``main(args) -> int``. CLI modules stay thin: parse arguments, call one library function, print where the
output went.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from chammi_cli.data_commands import SUBCOMMANDS as DATA_SUBCOMMANDS

#: subcommand -> (module, one-line help) of the model library
MODEL_SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("chammi_cli.train", "train a channel-adaptive model on a release"),
    "embed": ("chammi_cli.embed", "write features of a trained model, row-aligned with the manifest"),
    "demo": ("chammi_cli.demo", "the whole system end to end on the embedded sample data"),
}
#: every ``chammi`` subcommand: the data library's first, then the model library's
SUBCOMMANDS: dict[str, tuple[str, str]] = {**DATA_SUBCOMMANDS, **MODEL_SUBCOMMANDS}


def build_parser() -> argparse.ArgumentParser:
    from chammi_data import __version__

    parser = argparse.ArgumentParser(prog="chammi", description="CHAMMI toolkit")
    parser.add_argument("--version", action="version", version=f"chammi {__version__}")
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
