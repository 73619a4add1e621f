"""``chammi validate RELEASE``: exit 0 only when release.json, manifest, shards and zarr all agree.

Exit status: 0 all agree, 1 problems found (each listed, including a manifest that does not parse), 2 no
release at RELEASE (a missing folder, or one without release.json and manifest.parquet).
"""

from __future__ import annotations

import argparse

from chammi_cli.errors import EXIT_PROBLEMS


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "release",
        help="release folder or URL (s3://, gs://, http(s)://, file://) holding release.json, "
        "manifest.parquet, shards/, zarr/",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def main(args: argparse.Namespace) -> int:
    from chammi_data.format.manifest import MANIFEST_PARQUET, RELEASE_JSON, ReleaseNotFoundError
    from chammi_data.format.validate import validate_release
    from chammi_data.store.storage import open_store

    store = open_store(args.release)  # a folder or any URL, normalised once here
    if not store.exists(RELEASE_JSON) and not store.exists(MANIFEST_PARQUET):
        raise ReleaseNotFoundError(
            f"no release at {store}: neither {RELEASE_JSON} nor {MANIFEST_PARQUET} is there "
            "(run `chammi-build` to build one)"
        )
    report = validate_release(store, progress=not args.quiet)
    print(report.summary())
    return 0 if report.ok else EXIT_PROBLEMS
