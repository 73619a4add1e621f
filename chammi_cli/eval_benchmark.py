"""``chammi eval --benchmark NAME``: one command for every benchmark of the CHAMMI-75 suite.

    chammi eval --benchmark rbc-mc --release RELEASE --checkpoint RUN_DIR --out results/rbc-mc
    chammi eval --benchmark jumpcp --release RELEASE --features FEATURES --out results/jumpcp
    chammi eval --benchmark cellphie --release RELEASE --checkpoint channel_vit --bag-of-channels \\
        --model-option embed_dim=64 --out results/cellphie

``--release`` is the benchmark's release (``chammi-build --source rbc_mc|idr0017|cellphie|jumpcp|hpav23``;
for ``chammi`` a CHAMMI release), a folder or a URL. ``--checkpoint`` embeds first (a run or weights folder,
or a zoo model name: untrained, seeded by ``--seed``; ``--model-option KEY=VALUE`` sets its options);
``--features`` scores precomputed features, checked for row alignment. ``--option KEY=VALUE`` sets a scorer
option (YAML value, e.g. ``seeds=[0]``, ``fusion=late``). Writes ``OUT/results.json``, ``OUT/results.csv``,
``OUT/<NAME>.png`` (and ``OUT/features`` when it embedded). The library function:
``chammi_models.benchmark_embed.run_benchmark``.
"""

from __future__ import annotations

import argparse
from typing import Any


def register_benchmark(parser: argparse.ArgumentParser) -> None:
    """The ``--benchmark`` arguments of ``chammi eval``."""
    from chammi_data.evaluation.options import BENCHMARK_NAMES

    names = list(BENCHMARK_NAMES)
    group = parser.add_argument_group(
        "CHAMMI-75 benchmark suite", f"--benchmark NAME scores one benchmark: {', '.join(names)}"
    )
    group.add_argument("--benchmark", choices=names, default=None, help="which benchmark to score")
    group.add_argument(
        "--checkpoint",
        default=None,
        help="embed first: a run or weights folder, or a zoo model name (untrained, seeded by --seed)",
    )
    group.add_argument(
        "--bag-of-channels",
        action="store_true",
        help="embed each channel alone as a 1-channel image named by its type; concatenate in channel order",
    )
    group.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE", help="a scorer option (YAML value)"
    )
    group.add_argument(
        "--model-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of a zoo model named by --checkpoint (e.g. embed_dim=64, channels=chammi75)",
    )
    group.add_argument("--image-size", type=int, default=None, help="model input size (default: the card's)")
    group.add_argument("--batch-size", type=int, default=64)
    group.add_argument("--workers", type=int, default=0, help="DataLoader workers while embedding")
    group.add_argument("--seed", type=int, default=0, help="initialisation seed of an untrained zoo model")
    group.add_argument(
        "--translate-channels",
        default=None,
        choices=["chammi->chammi75", "chammi75->chammi"],
        help="rename the release's channel names into the model's vocabulary first",
    )
    group.add_argument("--quiet", action="store_true", help="no progress bars")


def parse_pairs(items: list[str], flag: str) -> dict[str, Any]:
    """``["a=1", "b=[0, 1]"]`` -> {"a": 1, "b": [0, 1]} (values parsed as YAML); a clear error otherwise."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{flag} {item!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ValueError(
                f"{flag} {item!r}: the value is not valid YAML ({' '.join(str(exc).split())})"
            ) from None
    return out


def main_benchmark(args: argparse.Namespace) -> int:
    """Embed (or read) features, score, write the results; print the headline."""
    import os

    before = os.environ.get("TQDM_DISABLE")
    if args.quiet:  # the scorers' libraries (copairs) draw tqdm bars of their own
        os.environ["TQDM_DISABLE"] = "1"
    try:
        return _run(args)
    finally:  # the environment as it was (a caller in the same process keeps its bars)
        if before is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = before


def _run(args: argparse.Namespace) -> int:
    from chammi_data.store.paths import default_release_location
    from chammi_models.benchmark_embed import run_benchmark

    if (args.features is None) == (args.checkpoint is None):
        raise ValueError(
            "--benchmark needs exactly one of --features (precomputed) or --checkpoint (embed first)"
        )
    options = parse_pairs(args.option, "--option")
    if args.benchmark == "chammi":  # the CHAMMI flags of chammi eval are its scorer's options
        options.setdefault("metric", args.metric)
        options.setdefault("classifier", args.classifier)
        if args.device is not None:
            options.setdefault("device", args.device)
    embed: dict[str, Any] = {}
    if args.checkpoint is not None:
        embed = {
            "bag_of_channels": args.bag_of_channels,
            "model_options": parse_pairs(args.model_option, "--model-option"),
            "image_size": args.image_size,
            "batch_size": args.batch_size,
            "workers": args.workers,
            "device": args.device,
            "seed": args.seed,
            "channel_translation": args.translate_channels,
            "progress": not args.quiet,
        }
    elif args.bag_of_channels or args.model_option:
        raise ValueError("--bag-of-channels and --model-option apply when embedding with --checkpoint")
    release = args.release if args.release is not None else default_release_location()
    result, paths = run_benchmark(
        args.benchmark,
        release,
        args.out,
        checkpoint=args.checkpoint,
        features=args.features,
        options=options,
        force=args.force,
        **embed,
    )
    print(f"{result.benchmark}: {result.headline} = {result.value:.4f}")
    shown = ", ".join(f"{k}={v:.4f}" for k, v in list(result.metrics.items())[:8] if k != result.headline)
    if shown:
        print(f"  {shown}")
    print(f"wrote {paths['json']}, {paths['csv']}, {paths['plot']}")
    return 0
