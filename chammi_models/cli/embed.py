"""``chammi embed``: features of a trained model for every manifest row, in the official per-dataset layout.

    chammi embed --checkpoint runs/tiny --release RELEASE --out features/tiny
    chammi eval --features features/tiny --release RELEASE
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="run folder of `chammi train` (uses RUN_DIR/model) or a weights folder")
    parser.add_argument("--release", type=Path, default=None,
                        help="release folder (default: $CHAMMI_RELEASE or ~/.cache/chammi/release)")
    parser.add_argument("--out", type=Path, required=True, help="output folder: OUT/<Allen|HPA|CP>/features.npy")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers")
    parser.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda if available)")
    parser.add_argument("--image-size", type=int, default=None, help="eval input size (default: the model card's)")


def main(args: argparse.Namespace) -> int:
    from chammi_data.paths import default_release_dir
    from chammi_models.embed import embed

    out = embed(args.checkpoint, args.release or default_release_dir(), args.out, batch_size=args.batch_size,
                workers=args.workers, device=args.device, image_size=args.image_size)
    print(f"features written to {out} (see {out / 'embedding.json'})")
    return 0
