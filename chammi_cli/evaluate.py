"""``chammi eval``: score a features folder against a release with the official 1-NN protocol and the CPS;
with ``--benchmark NAME`` any benchmark of the CHAMMI-75 suite (:mod:`chammi_cli.eval_benchmark`).

Writes ``results.csv`` (official columns: dataset, task, classifier, accuracy, f1_score_macro),
``results.json`` (full table, CPS, per-group results, metric, manifest checksums) and ``radar.png``.
Features that ``chammi embed`` wrote carry ``embedding.json``: when it says they were embedded from another
release, or a ``.npy`` changed since (rows permuted or replaced), scoring stops with that reason unless
``--force``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from chammi_data.errors import UserError
from chammi_data.evaluation.options import DEFAULT_BLOCK_SIZE, METRICS

CLASSIFIERS = ("knn", "sgd")


def register(parser: argparse.ArgumentParser) -> None:
    from chammi_cli.eval_benchmark import register_benchmark

    parser.add_argument(
        "--features",
        type=Path,
        default=None,
        help="folder with Allen|HPA|CP (or wtc11|hpa|cp)/*.npy; with --benchmark: the benchmark's features "
        "(a folder with features.npy, or a .npy)",
    )
    parser.add_argument(
        "--release",
        default=None,
        help="our release (a folder or a URL: s3://, gs://, http(s)://) or an official root "
        "(Allen|HPA|CP/enriched_meta.csv); default: $CHAMMI_RELEASE or ~/.cache/chammi/release",
    )
    parser.add_argument(
        "--metric",
        choices=METRICS,
        default="cosine",
        help="1-NN metric (default cosine; official default l2)",
    )
    parser.add_argument("--classifier", choices=CLASSIFIERS, default="knn")
    parser.add_argument(
        "--feature-file", default=None, help="which .npy to use when a source folder holds several"
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument(
        "--block-size", type=int, default=DEFAULT_BLOCK_SIZE, help="max similarity entries held at once"
    )
    parser.add_argument(
        "--device", default=None, help="torch device for the 1-NN products (default: cuda if available)"
    )
    parser.add_argument(
        "--name", default=None, help="model name for the radar legend (default: the features folder)"
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="score even when embedding.json says the features come from another release or were changed",
    )
    register_benchmark(parser)


def _release_identity(release: object) -> dict[str, object]:
    """What the feature check compares before scoring: our release's manifest sha256 from its release.json
    (an official root or a metadata file has none: then only the .npy files are checked)."""
    from chammi_data.format.manifest import read_release_json

    try:
        return {"kind": "release", "manifest_sha256": read_release_json(release).get("manifest_sha256")}
    except (FileNotFoundError, ValueError):
        return {}


def main(args: argparse.Namespace) -> int:
    if args.benchmark is not None:
        from chammi_cli.eval_benchmark import main_benchmark

        return main_benchmark(args)
    if args.features is None:  # argparse's own words, as before --features became optional
        raise UserError("the following arguments are required: --features (or --benchmark NAME)")
    from chammi_data.evaluation.features import identity_problems, load_features
    from chammi_data.evaluation.plots import radar_plot
    from chammi_data.evaluation.scoring import evaluate
    from chammi_data.store.paths import default_release_location

    release = args.release if args.release is not None else default_release_location()
    features = load_features(args.features, args.feature_file)
    problems = identity_problems(args.features, _release_identity(release), args.feature_file)
    if problems and not args.force:
        raise UserError(" | ".join(problems) + " (pass --force to score them anyway)")
    for p in problems:
        print(f"chammi eval: warning: {p} (scored anyway: --force)", file=sys.stderr)
    result = evaluate(
        features,
        release,
        metric=args.metric,
        classifier=args.classifier,
        block_size=args.block_size,
        device=args.device,
    )
    result.provenance.update(
        features=str(args.features), feature_file=args.feature_file, identity_warnings=problems
    )
    name = args.name or Path(args.features).resolve().name
    result.provenance["name"] = name
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result.official_table().to_csv(out / "results.csv", index=False, lineterminator="\n")
    (out / "results.json").write_text(result.to_json() + "\n", encoding="utf-8")
    radar_plot(
        {name: result.table},
        out / "radar.png",
        title=f"{name}: macro-F1 (1-NN {args.metric})"
        if args.classifier == "knn"
        else f"{name}: macro-F1 (sgd, {args.metric} features)",
    )
    print(result.table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    cps = "n/a (not all six OOD tasks scored)" if result.cps is None else f"{result.cps:.4f}"
    print(f"classifier={args.classifier} metric={args.metric} CPS={cps}")
    print(f"wrote {out / 'results.csv'}, {out / 'results.json'}, {out / 'radar.png'}")
    return 0
