"""``chammi embed``: features of a trained model for every manifest row, in the official per-dataset layout.

    chammi embed --checkpoint runs/tiny --release RELEASE --out features/tiny
    chammi eval --features features/tiny --release RELEASE

Exit status: 0 on success, 2 (one line on stderr) when --checkpoint or --release names no model or release,
or the model folder's card or weights are refused.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        type=Path,
        required=True,
        help="run folder of `chammi train` (uses RUN_DIR/model) or a weights folder",
    )
    parser.add_argument(
        "--release",
        default=None,
        help="release folder or URL (s3://, gs://, http(s)://, file://; default: $CHAMMI_RELEASE or "
        "~/.cache/chammi/release)",
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="output folder: OUT/<Allen|HPA|CP>/features.npy"
    )
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help=f"DataLoader workers (default: the cores this process may use, here {available_cores()})",
    )
    parser.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda if available)")
    parser.add_argument(
        "--image-size", type=int, default=None, help="eval input size (default: the model card's)"
    )
    parser.add_argument(
        "--translate-channels",
        default=None,
        choices=["chammi->chammi75", "chammi75->chammi"],
        help="rename the release's channels into the model's vocabulary first (a model trained on CHAMMI-75 "
        "embedding CHAMMI: chammi->chammi75; see chammi_data.format.vocab.SYNONYMS)",
    )


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def main(args: argparse.Namespace) -> int:
    from chammi_models.embed import embed

    out = embed(
        args.checkpoint,
        args.release,
        args.out,
        batch_size=args.batch_size,
        workers=available_cores() if args.workers is None else args.workers,
        device=args.device,
        image_size=args.image_size,
        channel_translation=args.translate_channels,
    )
    print(f"features written to {out} (see {out / 'embedding.json'})")
    return 0
