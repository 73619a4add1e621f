"""``chammi validate RELEASE``: exit 0 only when release.json, manifest, shards and zarr all agree.

Exit status: 0 all agree, 1 problems found (each listed, including a manifest that does not parse), 2 no
release at RELEASE (a missing folder, or one without release.json and manifest.parquet).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from chammi_cli.errors import EXIT_PROBLEMS, handles_user_errors


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "release", help="release folder (contains release.json, manifest.parquet, shards/, zarr/)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress output")


@handles_user_errors("chammi validate")
def main(args: argparse.Namespace) -> int:
    from chammi_data.format.manifest import MANIFEST_PARQUET, RELEASE_JSON, ReleaseNotFoundError
    from chammi_data.format.validate import validate_release

    root = Path(args.release)
    if not root.is_dir():
        raise ReleaseNotFoundError(f"no release at {root}: the folder does not exist")
    if not (root / RELEASE_JSON).exists() and not (root / MANIFEST_PARQUET).exists():
        raise ReleaseNotFoundError(
            f"no release at {root}: neither {RELEASE_JSON} nor {MANIFEST_PARQUET} is there "
            "(run `chammi-build` to build one)"
        )
    report = validate_release(root, progress=not args.quiet)
    print(report.summary())
    return 0 if report.ok else EXIT_PROBLEMS
