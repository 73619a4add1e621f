"""Subcommands of ``chammi`` that belong to the data library (the dispatcher lives in ``chammi_cli``).

Each module named here defines ``register(parser)`` and ``main(args) -> int``.
"""

#: subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "export": (
        "chammi_cli.export",
        "write a release in the official CHAMMI layout (tape PNGs + enriched_meta.csv)",
    ),
    "validate": ("chammi_cli.validate", "re-hash shards and check manifest vs shards vs zarr"),
    "eval": ("chammi_cli.evaluate", "score features with the official 1-NN protocol and the CPS"),
    "report": ("chammi_cli.report", "overlay several evaluated runs: radar plot + markdown table"),
}
