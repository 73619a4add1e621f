"""The command-line layer: the ``chammi`` and ``chammi-build`` commands and the demo.

This package stands above both ``pipelines`` (curation) and ``chammi_models`` (the zoo), which are siblings
over ``chammi_data``; nothing imports it except the ``__main__`` entry points. Each ``chammi`` subcommand is
one module with ``register(parser)`` (adds its arguments) and ``main(args) -> int``, loaded only when used;
modules stay thin: parse arguments, call one library function, print where the output went. Every command
answers errors the same way (:func:`chammi_cli.errors.run_command`).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from chammi_cli.errors import ArgumentParser, run_command

#: ``chammi`` subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "export": (
        "chammi_cli.export",
        "write a release in the official CHAMMI layout (tape PNGs + enriched_meta.csv)",
    ),
    "validate": ("chammi_cli.validate", "re-hash shards and check manifest vs shards vs zarr"),
    "eval": ("chammi_cli.evaluate", "score features with the official 1-NN protocol and the CPS"),
    "report": ("chammi_cli.report", "overlay several evaluated runs: radar plot + markdown table"),
    "train": ("chammi_cli.train", "train a channel-adaptive model on a release"),
    "embed": ("chammi_cli.embed", "write features of a trained model, row-aligned with the manifest"),
    "demo": ("chammi_cli.demo", "the whole system end to end on the embedded sample data"),
}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The ``chammi`` parser. Only the subcommand that ``argv`` names has its arguments registered (each
    subcommand's module is imported to register them, and some import torch and scikit-learn): a bad
    ``chammi validate`` answered in 9 s, most of it importing what ``chammi eval`` needs. ``argv=None``
    registers every subcommand (for help and documentation tools)."""
    from chammi_data import __version__

    parser = ArgumentParser(
        prog="chammi", description="CHAMMI toolkit", epilog="curation: chammi-build --help"
    )
    parser.add_argument("--version", action="version", version=f"chammi {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    named = None if argv is None else next((a for a in argv if not a.startswith("-")), "")
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        if named is None or named == name:
            importlib.import_module(module).register(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The ``chammi`` console script: parse, then run the subcommand through :func:`run_command`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    return run_command(f"chammi {args.command}", importlib.import_module(args._module).main, args)


if __name__ == "__main__":
    sys.exit(main())
