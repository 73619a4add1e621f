"""``chammi-build`` (also ``python -m pipelines``): regenerate CHAMMI from raw sources (or convert an official
download) into a release.

    chammi-build --source {wtc11,hpa,cp,chammi,chammi75,all} [--input LOCATION | --input SOURCE=LOCATION ...]
                 [--output LOCATION] [--workers N] [--scheduler ADDRESS] [--config FILE]
                 [--set SECTION.KEY=VALUE ...] [--codec {zstd,lz4,none}] [--strict] [--seed N] [--keep-work]
                 [--quiet] [--anon] [--input-option KEY=VALUE ...] [--output-option KEY=VALUE ...]
    chammi-build synth --output DIR [--seed N] [--source NAME ...]
    chammi-build cellphie-convert --input PICKLE --output DIR --trust-pickle
    chammi-build --version

Without ``--input`` the embedded sample raw data is generated (deterministically, by ``--seed``) into
``OUTPUT/.work/sample_raw`` and built; it is removed after a successful build unless ``--keep-work``.
Without ``--output`` the release goes to ``chammi_data.store.paths.default_release_location()``. ``--input``
and ``--output`` are locations: folders, ``file://``, ``s3://``, ``gs://``, any fsspec URL (``--input`` also
``http(s)://``); ``--anon`` reads a public bucket without credentials, ``--input-option`` /
``--output-option`` pass fsspec storage options (``endpoint_url=...``, ``profile=...``); credentials otherwise
come from the standard chains. Exit statuses (:mod:`chammi_cli.errors`): 0 ok, 1 failed build (``--strict``
with skipped items, no cells, accounting that does not add up, a raw object still unreadable after every
retry: the previous release stays, ``build_report.failed.json`` says why, finished units are kept for a
rerun), 2 bad arguments, unreadable source tables, a malformed config, an output another build holds or that
holds files chammi-build did not write, a full disk, 130 Ctrl-C.

The curation package is called ``pipelines``, a name other projects use too (on PyPI and as a folder name). A
foreign ``pipelines`` earlier on ``sys.path`` would otherwise show up as a baffling ``No module named
'pipelines.engine'``; this module checks first and says what happened.
"""

from __future__ import annotations

import argparse
import sys

from chammi_cli.errors import EXIT_PROBLEMS, ArgumentParser, UserError, run_command

PROG = "chammi-build"
SYNTH_USAGE = "chammi-build synth --output DIR [--seed N] [--source NAME ...]"
CONVERT_USAGE = "chammi-build cellphie-convert --input PICKLE --output DIR --trust-pickle"


def own_pipelines() -> None:
    """Raise :class:`UserError` naming the package and the fix when ``import pipelines`` is not this
    toolkit's."""
    import pipelines

    if not getattr(pipelines, "__chammi__", False):
        where = getattr(pipelines, "__file__", None) or list(getattr(pipelines, "__path__", []))
        raise UserError(
            f"'import pipelines' resolves to {where}, which is not the CHAMMI toolkit's pipelines package "
            "(another distribution also named 'pipelines', or a folder of that name earlier on sys.path). "
            "Uninstall the other 'pipelines' distribution (pip uninstall pipelines), run from another "
            "folder, "
            "or use a fresh virtual environment for chammi."
        )


def package_version() -> str:
    """The installed chammi version (``chammi_data.__version__``)."""
    from chammi_data import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    from chammi_data.store.paths import default_release_location
    from pipelines.sources.registry import list_pipelines

    p = ArgumentParser(
        prog=PROG,
        description="Build a CHAMMI release from raw sources.",
        epilog=f"subcommands: `{SYNTH_USAGE}` writes the sample raw data in the real layouts "
        f"(see `chammi-build synth --help`); `{CONVERT_USAGE}` converts CellPHIE's pickle once",
    )
    p.add_argument("--version", action="version", version=f"chammi-build {package_version()}")
    p.add_argument(
        "--source",
        required=True,
        choices=[*list_pipelines(), "all"],
        help="which source to build; all = wtc11 + hpa + cp into one release; chammi = official download",
    )
    p.add_argument(
        "--input",
        action="append",
        default=None,
        metavar="[SOURCE=]LOCATION",
        help="raw data: a folder or a URL (s3://, gs://, https://, any fsspec URL; with --source all: "
        "INPUT/wtc11, INPUT/hpa, INPUT/cp); or one SOURCE=LOCATION per source, repeatable (several for one "
        "source are built as one); for chammi75 the CHAMMI-75 root, such as s3://chammi-data/CHAMMI-75; "
        "for a benchmark (rbc_mc, idr0017, cellphie, jumpcp, hpav23) its test data or a location above it "
        "(found under the NAME.prefix option); default: generate the embedded sample data",
    )
    p.add_argument(
        "--output",
        default=None,
        help=f"release: a folder or an object-store URL (s3://bucket/prefix, gs://...) "
        f"(default {default_release_location()})",
    )
    p.add_argument("--workers", type=int, default=2, help="local dask workers (processes, 1 thread each)")
    p.add_argument(
        "--scheduler",
        default=None,
        help="address of an existing dask scheduler (tcp://HOST:8786); with an object-store --output its "
        "workers need no shared disk, with a folder they must all see it",
    )
    p.add_argument("--anon", action="store_true", help="read --input anonymously (a public bucket)")
    p.add_argument(
        "--input-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fsspec storage option for --input (repeatable; value parsed as YAML), e.g. endpoint_url=...",
    )
    p.add_argument(
        "--output-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fsspec storage option for --output (repeatable)",
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
    p.add_argument(
        "--codec",
        default=None,
        choices=["zstd", "lz4", "none"],
        help="image member codec (config key codec): zstd (default; smallest), lz4 (faster to decode, "
        "larger), none (uncompressed, checksummed)",
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
    from pipelines.sources.registry import RAW_SOURCES, SAMPLE_SOURCES

    p = ArgumentParser(
        prog="chammi-build synth", description="Write the sample raw data in the real layouts."
    )
    p.add_argument("--output", required=True, help="folder to write DIR/wtc11, DIR/hpa, DIR/cp into")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--source", nargs="*", default=list(RAW_SOURCES), choices=list(SAMPLE_SOURCES))
    return p


def synth(args: argparse.Namespace) -> int:
    """``chammi-build synth``: the sample raw data of the chosen sources."""
    from pathlib import Path

    from pipelines.sources.synthetic import write_sample

    if Path(args.output).exists() and not Path(args.output).is_dir():
        raise UserError(f"--output {args.output} is a file, not a folder")
    out = write_sample(args.output, seed=args.seed, sources=args.source, progress=True)
    print(f"sample raw data ({', '.join(args.source)}, seed {args.seed}) written to {out}")
    return 0


def storage_options(items: list[str], where: str) -> dict[str, object]:
    """``["key=value", ...]`` as fsspec storage options (values parsed as YAML: numbers, booleans, lists)."""
    import yaml

    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(
                f"--{where}-option {item!r}: expected KEY=VALUE, e.g. endpoint_url=http://host:9000"
            )
        out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
    return out


def input_locations(items: list[str] | None) -> str | dict[str, list[str]] | None:
    """``--input``: one location, or ``SOURCE=LOCATION`` items as ``{source: [locations]}``."""
    from pipelines.sources.registry import list_pipelines

    if not items:
        return None
    named: dict[str, list[str]] = {}
    plain = []
    for item in items:
        name, sep, loc = item.partition("=")
        if sep and name in list_pipelines() and loc:
            named.setdefault(name, []).append(loc)
        else:
            plain.append(item)
    if named and plain or len(plain) > 1:
        raise UserError(
            "--input: give one location, or SOURCE=LOCATION for each source (e.g. --input wtc11=s3://... "
            "--input cp=s3://...), not both"
        )
    return named or plain[0]


def input_options(args: argparse.Namespace) -> dict[str, object] | None:
    """The storage options of ``--input``: ``--input-option`` items, plus ``anon: true`` for ``--anon``
    (applied to the S3 locations; ``token: anon`` on Google Cloud Storage; plain HTTP needs none)."""
    from chammi_data.store.paths import protocol_of

    opts = storage_options(args.input_option, "input")
    if args.anon:
        locs = args.input or []
        remote = [x for x in locs if protocol_of(x.partition("=")[2] if "=" in x.split("://")[0] else x)]
        if not remote:
            raise UserError(
                f"--anon reads a public bucket; --input {' '.join(locs) or '(sample)'} is not one"
            )
        opts.setdefault("anon", True)
    return opts or None


def convert_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="chammi-build cellphie-convert",
        description="Convert CellPHIE's published pickle once into plain arrays + CSV (what --source "
        "cellphie reads). A pickle can run code when it is loaded: this needs --trust-pickle.",
    )
    p.add_argument("--input", required=True, help="the pickle (a path or URL)")
    p.add_argument("--output", required=True, help="folder for the converted form (--input of the build)")
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="I trust this file's origin: unpickle it (restricted to numpy/pandas names) and convert it",
    )
    return p


def convert(args: argparse.Namespace) -> int:
    """``chammi-build cellphie-convert``: refuse without --trust-pickle, else warn loudly and convert."""
    from pipelines.sources.benchmarks.cellphie.convert import WARNING, convert_pickle

    if args.trust_pickle:
        print(WARNING.format(path=args.input), file=sys.stderr, flush=True)
    info = convert_pickle(args.input, args.output, trust=args.trust_pickle)
    print(
        f"converted {info['cells']} cells ({info['channels']} x {info['height']} x {info['width']} "
        f"{info['dtype']}) into {args.output}; build with chammi-build --source cellphie --input "
        f"{args.output}"
    )
    return 0


def build(args: argparse.Namespace) -> int:
    """``chammi-build --source ...``: build, print the summary; 1 when the build failed."""
    from chammi_data.store.storage import RemoteReadError
    from pipelines.engine.build import build as run_build

    same_names = (
        "workers",
        "scheduler",
        "config",
        "strict",
        "seed",
        "keep_work",
    )  # build()'s parameter names
    options = {name: getattr(args, name) for name in same_names}
    if args.set or args.codec is not None:  # --set items and --codec over --config over the defaults
        from pipelines.engine.build_config import load_config, parse_settings

        overrides = parse_settings(args.set)
        if args.codec is not None:  # the flag wins over the config file's codec key
            overrides["codec"] = args.codec
        options["config"] = load_config(args.config, overrides)
    try:
        result = run_build(
            args.source,
            input_dir=input_locations(args.input),
            output=args.output,
            progress=not args.quiet,
            input_options=input_options(args),
            output_options=storage_options(args.output_option, "output") or None,
            **options,
        )
    except RemoteReadError as exc:  # a server down or a network gone: the build stopped, it can resume
        print(
            f"{PROG}: error: the build stopped: {' '.join(str(exc).split())}; finished units are kept: rerun "
            "the same command to resume",
            file=sys.stderr,
        )
        return EXIT_PROBLEMS
    print(result.summary())
    return 0 if result.ok else EXIT_PROBLEMS


def main(argv: list[str] | None = None) -> int:
    """The ``chammi-build`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    code = run_command(PROG, own_pipelines)
    if code:
        return code
    if argv[:1] == ["synth"]:
        return run_command("chammi-build synth", synth, synth_parser().parse_args(argv[1:]))
    if argv[:1] == ["cellphie-convert"]:
        return run_command("chammi-build cellphie-convert", convert, convert_parser().parse_args(argv[1:]))
    return run_command(PROG, build, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
