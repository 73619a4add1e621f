"""``chammi-build`` (also ``python -m pipelines``): regenerate CHAMMI from raw sources (or convert an official
download) into a release.

    chammi-build --source {wtc11,hpa,cp,chammi,chammi75,all} [--input DIR|URL] [--output DIR] [--workers N]
                 [--scheduler ADDRESS] [--config FILE] [--set SECTION.KEY=VALUE ...] [--strict] [--seed N]
                 [--keep-work] [--quiet]
    chammi-build synth --output DIR [--seed N] [--source NAME ...]
    chammi-build --version

Without ``--input`` the embedded sample raw data is generated (deterministically, by ``--seed``) into
``OUTPUT/.work/sample_raw`` and built; it is removed after a successful build unless ``--keep-work``.
Without ``--output`` the release goes to ``chammi_data.store.paths.default_release_dir()``. Exit status: 0 ok,
1 failed build (``--strict`` with skipped items, no cells, accounting that does not add up: the previous
release stays, ``OUTPUT/build_report.failed.json`` says why), 2 bad arguments, unreadable source tables,
or an output folder another build holds.
"""

from __future__ import annotations

import argparse
import sys

from chammi_data.store.paths import default_release_dir
from pipelines.engine.output import OutputLocked
from pipelines.sources.registry import RAW_SOURCES, SAMPLE_SOURCES, list_pipelines


def package_version() -> str:
    """The installed chammi version (``chammi_data.__version__``)."""
    from chammi_data import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chammi-build", description="Build a CHAMMI release from raw sources.")
    p.add_argument("--version", action="version", version=f"chammi-build {package_version()}")
    p.add_argument(
        "--source",
        required=True,
        choices=[*list_pipelines(), "all"],
        help="which source to build; all = wtc11 + hpa + cp into one release; chammi = official download",
    )
    p.add_argument(
        "--input",
        default=None,
        help="raw folder (with --source all: DIR/wtc11, DIR/hpa, DIR/cp); for chammi75 the CHAMMI-75 root, "
        "a folder or a URL such as s3://chammi-data/CHAMMI-75; default: generate the embedded sample data",
    )
    p.add_argument("--output", default=None, help=f"release folder (default {default_release_dir()})")
    p.add_argument("--workers", type=int, default=2, help="local dask workers (processes, 1 thread each)")
    p.add_argument(
        "--scheduler", default=None, help="address of an existing dask scheduler (workers must see OUTPUT)"
    )
    p.add_argument("--config", default=None, help="YAML build config merged over the defaults")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="one build option over --config (the value is YAML), e.g. chammi75.metadata=small "
        "chammi75.studies=[wtc0001] chammi75.cap_per_study=100 chammi75.holdout_studies=[idr0017]",
    )
    p.add_argument("--strict", action="store_true", help="any skipped item fails the build (exit 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated sample data (no --input)")
    p.add_argument(
        "--keep-work",
        action="store_true",
        help="keep OUTPUT/.work (unit spills, generated sample data) after success",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def synth_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="chammi-build synth", description="Write the sample raw data in the real layouts."
    )
    p.add_argument("--output", required=True, help="folder to write DIR/wtc11, DIR/hpa, DIR/cp into")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--source", nargs="*", default=list(RAW_SOURCES), choices=list(SAMPLE_SOURCES))
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["synth"]:
        args = synth_parser().parse_args(argv[1:])
        from pipelines.sources.synthetic import write_sample

        out = write_sample(args.output, seed=args.seed, sources=args.source, progress=True)
        print(f"sample raw data ({', '.join(args.source)}, seed {args.seed}) written to {out}")
        return 0
    args = build_parser().parse_args(argv)
    from pipelines.engine.build import build
    from pipelines.engine.build_config import load_config, parse_settings

    try:
        config = load_config(args.config, parse_settings(args.set)) if args.set else args.config
        result = build(
            args.source,
            input_dir=args.input,
            output=args.output,
            workers=args.workers,
            scheduler=args.scheduler,
            config=config,
            strict=args.strict,
            progress=not args.quiet,
            seed=args.seed,
            keep_work=args.keep_work,
        )
    except (FileNotFoundError, KeyError, ValueError, OutputLocked) as exc:
        print(f"chammi-build: error: {exc}", file=sys.stderr)
        return 2
    print(result.summary())
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
