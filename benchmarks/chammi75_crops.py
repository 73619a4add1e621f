"""CHAMMI-75 training reads: stored crops (``chammi75.store=crops``) vs guided crops cut from whole images.

    python benchmarks/chammi75_crops.py [--scale 8] [--images 2] [--repeats 3]

Both releases are built here from the same sample (the embedded CHAMMI-75 generator at realistic sizes,
``--scale 8``: 576 x 768 to 1024 x 1024 pixels, 1 to 5 channels): the default release of whole images,
streamed with ``stream(guided_crop=224, output="uint8")`` (each sample reads and decodes a whole image and
cuts a crop), and a release of stored crops (``store=crops``, ``crop_size=224``, ``crops_per_image=8``),
streamed with ``stream(output="uint8")`` (each sample reads one 224 x 224 member). Samples/s of one epoch
through a DataLoader, best of ``--repeats`` epochs measured in alternation after a warm-up epoch each, one
thread per process; the ratio is measured in the same run. Also reported: build seconds and release bytes
of each (which of the two is larger depends on the images' sizes, the crop size and the crops per image).
Results: the ``stored_crops`` section of ``benchmarks/results/chammi75.md``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from chammi75 import write_results  # noqa: E402

from chammi_data.loading.streaming import stream  # noqa: E402

SIZE, SEED = 224, 0


def _size(root: Path) -> int:
    """Bytes of a release's shards, zarr stores and manifest (not the build's work folder)."""
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and ".work" not in p.parts)


def make_releases(work: Path, scale: int, images: int) -> dict[str, Any]:
    """Write the sample and build both releases into ``work`` (timed); returns their paths and costs."""
    from pipelines.engine.build import build
    from pipelines.sources.chammi75.synth import write_sample

    raw = work / "CHAMMI-75"
    if not (raw / "CHAMMI-75_train_metadata.csv").exists():
        write_sample(raw, seed=0, scale=scale, images=images)
    out: dict[str, Any] = {}
    for store in ("images", "crops"):
        release = work / store
        section = {"store": store, "crop_size": SIZE, "crops_per_image": 8}
        t0 = time.perf_counter()
        res = build("chammi75", raw, release, workers=2, progress=False, config={"chammi75": section})
        assert res.ok, res.failed
        out[f"{store}_build_s"] = time.perf_counter() - t0
        out[f"{store}_rows"] = len(res.cells)
        out[f"{store}_bytes"] = _size(release)
        out[store] = release
    return out


def _epoch_rate(loader: Any) -> float:
    t0, n = time.perf_counter(), 0
    for batch in loader:
        n += len(batch)
    return n / (time.perf_counter() - t0)


def compare(releases: dict[str, Any], repeats: int, workers: int) -> dict[str, float]:
    """(whole images + guided crops, stored crops) samples/s, best epoch of each, in alternation."""
    torch.set_num_threads(1)
    streams = {
        "whole": stream(
            releases["images"], seed=SEED, guided_crop=SIZE, output="uint8", workers=max(1, workers)
        ),
        "stored": stream(releases["crops"], seed=SEED, output="uint8", workers=max(1, workers)),
    }
    kw = {"persistent_workers": True} if workers else {}
    loaders = {
        k: DataLoader(s, batch_size=8, num_workers=workers, collate_fn=list, **kw) for k, s in streams.items()
    }
    best = {k: 0.0 for k in streams}
    for r in range(repeats + 1):
        for k, loader in loaders.items():
            streams[k].set_epoch(r)
            rate = _epoch_rate(loader)
            best[k] = max(best[k], rate) if r else 0.0
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=8)
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "chammi75-crops-bench")
    args = ap.parse_args(argv)
    rel = make_releases(args.work / f"s{args.scale}-i{args.images}", args.scale, args.images)
    r: dict[str, Any] = {k: v for k, v in rel.items() if not isinstance(v, Path)}
    for w in (0, 2):
        best = compare(rel, args.repeats, w)
        r[f"whole_{w}w"], r[f"stored_{w}w"] = best["whole"], best["stored"]
        r[f"ratio_{w}w"] = best["stored"] / best["whole"]
    lines = [
        "## Stored crops (`chammi75.store=crops`) vs guided crops from whole images",
        "",
        f"{r['images_rows']} whole images of the sample generator (`--scale {args.scale}`: "
        f"{72 * args.scale} x {96 * args.scale} to {128 * args.scale} x {128 * args.scale} pixels, 1 to 5 "
        "channels) and the "
        f"{r['crops_rows']} crops a `store=crops` build stores of them (`crop_size={SIZE}`, "
        "`crops_per_image=8`); both streamed as 224 x 224 uint8, one thread per process. Samples/s, best of "
        f"{args.repeats} epochs:",
        "",
        "| DataLoader workers | whole images + `guided_crop=224` | stored crops | ratio |",
        "|---|---|---|---|",
        *(
            f"| {w} | {r[f'whole_{w}w']:.1f} | {r[f'stored_{w}w']:.1f} | **{r[f'ratio_{w}w']:.2f}x** |"
            for w in (0, 2)
        ),
        "",
        f"Build (2 workers): whole images {r['images_build_s']:.1f} s, {r['images_bytes'] / 1e6:.1f} MB; "
        f"stored crops {r['crops_build_s']:.1f} s, {r['crops_bytes'] / 1e6:.1f} MB. Stored crops have no "
        "jitter and a fixed set of cells per image (at most 8): the stream's guided crops draw a new cell "
        "and side every epoch.",
    ]
    write_results("stored_crops", r, lines)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
