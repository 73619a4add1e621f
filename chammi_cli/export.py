"""``chammi export --format chammi RELEASE OUTDIR``: a release in the official CHAMMI layout.

OUTDIR gets ``Allen/``, ``HPA/``, ``CP/`` (tape PNGs + ``enriched_meta.csv``) and, unless ``--no-cam-csv``,
``morphem70k_v2.csv``, the combined CSV the paper's training code reads
(``chammi_data.interop.cam_training_csv``).
"""

from __future__ import annotations

import argparse


def register(parser: argparse.ArgumentParser) -> None:
    from chammi_data.interop.official_export import FORMATS

    parser.add_argument("release", help="release folder (manifest.parquet, shards/)")
    parser.add_argument(
        "outdir", help="output folder: gets Allen/, HPA/, CP/ with tape PNGs + enriched_meta.csv"
    )
    parser.add_argument("--format", default="chammi", choices=FORMATS, help="output layout (default: chammi)")
    parser.add_argument(
        "--sources", nargs="+", default=None, help="only these sources (wtc11 hpa cp or Allen HPA CP)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing source folders in OUTDIR")
    parser.add_argument(
        "--cam-csv",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also write OUTDIR/morphem70k_v2.csv for the paper's training code (default: yes)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def main(args: argparse.Namespace) -> int:
    from chammi_data.interop.official_export import export_official

    summary = export_official(
        args.release,
        args.outdir,
        sources=args.sources,
        overwrite=args.overwrite,
        progress=not args.quiet,
        cam_csv=getattr(args, "cam_csv", True),
    )
    print(summary)
    return 0
