"""``chammi validate RELEASE``: exit 0 only when release.json, manifest, shards and zarr all agree."""

from __future__ import annotations

import argparse


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("release", help="release folder (contains release.json, manifest.parquet, shards/, zarr/)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def main(args: argparse.Namespace) -> int:
    from chammi_data.validate import validate_release

    report = validate_release(args.release, progress=not args.quiet)
    print(report.summary())
    return 0 if report.ok else 1
