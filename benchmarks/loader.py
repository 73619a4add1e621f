"""Loader benchmark: official tape PNGs vs our tar shards vs zarr, plus a raw-bytes ceiling and disk sizes.

    python benchmarks/loader.py --n 200 --workers 2

Per source it makes ``--n`` synthetic cells at the REAL tile sizes (WTC 238x374x3, HPA 512x512x4,
CP 160x160x5) with microscopy-like content (dark background, soft cell bodies with smooth blob texture,
Poisson shot noise at 4 photons per grey level), writes them (a) as 8-bit tape PNGs in the official layout, (b)+(c) as a release (tar
shards + zarr), and reads every cell back as a float (C, H, W) tensor in [0, 1]:

- ``png``: PIL imread + fold (the way the official loaders read tapes),
- ``tar``: ``chammi_data.load`` (pread by manifest offset + zstd decode),
- ``tar-seq``: a sequential pass over the shards (``shards.iter_samples``, what streaming does),
- ``zarr``: ``chammi_data.load(backend="zarr")``,
- ``ceiling``: reading the tar shard bytes with no decoding (page cache warm, like every other reader),

in one process and with ``--workers`` DataLoader workers. MB/s counts decoded pixel bytes (uint8),
except for the ceiling (file bytes). Results go to benchmarks/results/loader.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import zstandard
from PIL import Image
from scipy import ndimage
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from chammi_data.codec import encode_image
from chammi_data.dataset import load
from chammi_data.manifest import read_manifest
from chammi_data.official import chw_to_tape, tape_to_chw
from chammi_data.schema import Cell, make_cell_id
from chammi_data.shards import ShardReader, iter_samples
from chammi_data.vocab import SOURCES
from chammi_data.writer import ReleaseWriter


def synthetic_cell(rng: np.random.Generator, source: str, i: int) -> Cell:
    """One microscopy-like cell at the source's real tile size (uint8)."""
    info = SOURCES[source]
    h, w = info.tile_hw
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = h / 2 + rng.normal(0, h / 20), w / 2 + rng.normal(0, w / 20)
    ry, rx = h * rng.uniform(0.25, 0.4), w * rng.uniform(0.25, 0.4)
    body = np.exp(-(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2) ** 2)  # soft-edged cell body
    nucleus = np.exp(-(((yy - cy) / (0.45 * ry)) ** 2 + ((xx - cx) / (0.45 * rx)) ** 2) ** 2)
    chans = []
    for c, name in enumerate(info.channels):
        small = ndimage.gaussian_filter(rng.random((h // 8 + 1, w // 8 + 1)), 1.0)
        texture = ndimage.zoom(small, (h / small.shape[0], w / small.shape[1]), order=1)[:h, :w]
        texture = (texture - texture.min()) / (np.ptp(texture) + 1e-6)
        mask = nucleus if name == "nucleus" else body
        level = 255 * info.mean[c] * 4
        signal = 2 + level * mask * (0.4 + 0.6 * texture)
        # Shot noise: Poisson counts at 4 photons per grey level (noise std ~1 at the dark background).
        chans.append(np.clip(rng.poisson(signal * 4) / 4.0, 0, 255))
    image = np.round(np.stack(chans)).astype(np.uint8)
    return Cell(image=image, channels=info.channels, source=source, label="bench", cell_id=make_cell_id(source, "bench", i),
                split="Train", groups={info.group_column: "g"})


class PngTapes(Dataset):
    """Official-style reader: imread the tape, fold to (C, H, W), float in [0, 1]."""

    def __init__(self, paths: list[Path], width: int):
        self.paths, self.width = paths, width

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        with Image.open(self.paths[i]) as im:
            tape = np.asarray(im)
        # The same float conversion as chammi_data.dataset, so only the decoding differs.
        return torch.from_numpy(np.divide(tape_to_chw(tape, self.width), np.float32(255), dtype=np.float32))


class PngArrays(PngTapes):
    """Official-style decode only: imread + fold -> uint8 (C, H, W) (no float conversion)."""

    def __getitem__(self, i: int) -> np.ndarray:  # type: ignore[override]
        with Image.open(self.paths[i]) as im:
            return np.ascontiguousarray(tape_to_chw(np.asarray(im), self.width))


class TarArrays(Dataset):
    """Our decode only: one pread + zstd + .npy header -> uint8 (C, H, W), as ReleaseDataset does before float."""

    def __init__(self, root: Path):
        self.rows = read_manifest(root).to_dict("records")
        self.reader = ShardReader(root)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.reader.read(self.rows[i])


class RawArrays(Dataset):
    """Ceiling: the same pixels stored uncompressed in one file, one pread + frombuffer per cell."""

    def __init__(self, path: Path, shape: tuple[int, ...]):
        self.path, self.shape = path, shape
        self.size = int(np.prod(shape))
        self.n = path.stat().st_size // self.size
        self.fd: int | None = None

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> np.ndarray:
        if self.fd is None:
            self.fd = os.open(self.path, os.O_RDONLY)
        return np.frombuffer(os.pread(self.fd, self.size, i * self.size), np.uint8).reshape(self.shape)


class Images(Dataset):
    """Wrap a ReleaseDataset so every reader returns just the image tensor."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.ds[i]["image"]


def _first(batch):
    return batch


def timed(ds: Dataset, workers: int, repeat: int = 2) -> float:
    """Best-of-``repeat`` seconds to read every item once (one process, or ``workers`` DataLoader workers)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        if workers == 0:
            for i in range(len(ds)):
                ds[i]
        else:
            for _ in DataLoader(ds, batch_size=16, num_workers=workers, collate_fn=_first):
                pass
        best = min(best, time.perf_counter() - t0)
    return best


def delta_zstd_bytes(image: np.ndarray, level: int = 9) -> int:
    """Size with a horizontal delta filter before zstd (a codec option we do NOT use; for comparison)."""
    d = np.diff(image.astype(np.int16), axis=2, prepend=0).astype(np.uint8)
    return len(zstandard.ZstdCompressor(level=level).compress(d.tobytes()))


def dir_bytes(path: Path, pattern: str = "*") -> int:
    return sum(p.stat().st_size for p in path.rglob(pattern) if p.is_file())


def bench_source(source: str, n: int, workers: int, work: Path, seed: int) -> dict:
    info = SOURCES[source]
    rng = np.random.default_rng(seed)
    cells = [synthetic_cell(rng, source, i) for i in tqdm(range(n), desc=f"make {source}", leave=False)]
    png_dir = work / "png" / info.folder
    png_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for c in tqdm(cells, desc=f"png {source}", leave=False):
        p = png_dir / f"{c.cell_id}.png"
        Image.fromarray(chw_to_tape(c.image)).save(p, format="PNG")  # PIL default compression, as usual
        paths.append(p)
    rel = work / f"release_{source}"
    writer = ReleaseWriter(rel, cells_per_shard=64)
    writer.add_source(source, cells)
    writer.close()
    pixel_mb = sum(c.image.nbytes for c in cells) / 1e6
    raw_path = work / f"raw_{source}.u8"
    with open(raw_path, "wb") as fh:
        for c in cells:
            fh.write(np.ascontiguousarray(c.image).tobytes())
    zstd_sizes = {str(lvl): sum(len(encode_image(c.image, lvl)) for c in cells[:20]) for lvl in (3, 9, 19)}
    zstd_sizes["delta9"] = sum(delta_zstd_bytes(c.image) for c in cells[:20])
    zstd_sizes["png"] = sum((png_dir / f"{c.cell_id}.png").stat().st_size for c in cells[:20])
    del cells
    readers = {
        "png": PngTapes(paths, info.tile_hw[1]),
        "tar": Images(load("all", root=rel)),
        "zarr": Images(load("all", root=rel, backend="zarr")),
        "png-u8": PngArrays(paths, info.tile_hw[1]),
        "tar-u8": TarArrays(rel),
        "raw-u8": RawArrays(raw_path, (info.num_channels, *info.tile_hw)),
    }
    out: dict = {"n": n, "tile": [info.num_channels, *info.tile_hw], "pixel_MB": round(pixel_mb, 2), "read": {}}
    for name, ds in readers.items():
        for wk in (0, workers):
            s = timed(ds, wk)
            out["read"][f"{name}/w{wk}"] = {"samples_s": n / s, "MB_s": pixel_mb / s}
    shards = sorted((rel / "shards").rglob("*.tar"))
    t0 = time.perf_counter()
    count = sum(1 for p in shards for _ in iter_samples(p))
    s = time.perf_counter() - t0
    out["read"]["tar-seq/w0"] = {"samples_s": count / s, "MB_s": pixel_mb / s}
    t0 = time.perf_counter()
    nbytes = sum(len(p.read_bytes()) for p in shards)
    s = time.perf_counter() - t0
    out["read"]["ceiling/w0"] = {"samples_s": n / s, "MB_s": nbytes / 1e6 / s}
    out["disk_MB"] = {"png": dir_bytes(png_dir, "*.png") / 1e6, "tar": dir_bytes(rel / "shards") / 1e6,
                      "zarr": dir_bytes(rel / "zarr") / 1e6}
    out["zstd_level_bytes_first20"] = zstd_sizes
    return out


def to_markdown(res: dict) -> str:
    lines = [
        "# Loader benchmark",
        "",
        f"`python benchmarks/loader.py --n {res['n']} --workers {res['workers']}` on {res['machine']} "
        f"(synthetic microscopy-like cells at the real tile sizes, Poisson shot noise; page cache warm for every reader; 2-core machine, "
        f"otherwise idle; treat numbers as +-20%). MB/s = decoded uint8 pixel MB/s (ceiling: file MB/s). "
        "Rows png/tar/zarr deliver float (C,H,W) tensors in [0,1] (what `chammi_data.load` returns); rows *-u8 "
        "stop at the decoded uint8 array (the read itself); raw-u8 reads the same pixels stored uncompressed "
        "(one pread per cell): the ceiling for any reader that delivers these arrays.",
        "",
        "| source | reader | samples/s (1 proc) | MB/s (1 proc) | samples/s (workers) | MB/s (workers) | vs png (1 proc) |",
        "|---|---|---|---|---|---|---|",
    ]
    for src, r in res["sources"].items():
        base = r["read"]["png/w0"]["samples_s"]
        base_u8 = r["read"].get("png-u8/w0", r["read"]["png/w0"])["samples_s"]
        for name in ("png", "tar", "tar-seq", "zarr", "png-u8", "tar-u8", "raw-u8", "ceiling"):
            one = r["read"].get(f"{name}/w0")
            many = r["read"].get(f"{name}/w{res['workers']}")
            cells = [f"{one['samples_s']:.0f}", f"{one['MB_s']:.0f}"]
            cells += [f"{many['samples_s']:.0f}", f"{many['MB_s']:.0f}"] if many else ["-", "-"]
            if one is None:
                continue
            ref = base_u8 if name.endswith("-u8") else base
            lines.append(f"| {src} | {name} | " + " | ".join(cells) + f" | {one['samples_s'] / ref:.1f}x |")
    lines += ["", "| source | tape PNG MB | tar shards MB | tar / PNG | zarr MB | first 20 cells, bytes: zstd 3 / 9 / 19 / "
              "delta+zstd 9 (not used) / PNG |", "|---|---|---|---|---|---|"]
    for src, r in res["sources"].items():
        d, z = r["disk_MB"], r["zstd_level_bytes_first20"]
        lines.append(f"| {src} | {d['png']:.2f} | {d['tar']:.2f} | {d['tar'] / d['png']:.2f} | {d['zarr']:.2f} | "
                     f"{z['3']} / {z['9']} / {z['19']} / {z['delta9']} / {z['png']} |")
    lines += ["", "## Targets (issue 2) on this run", ""] + _targets(res) + ["", _NOTES]
    return "\n".join(lines) + "\n"


_NOTES = """Reading the numbers. Speed: the tar path is bound by zstd decompression of noisy 8-bit pixels
(700-850 MB/s of pixels on one core here), PNG by inflate + unfilter (170-190 MB/s): 4.0-4.8x, short of the 5x
target. The uncompressed ceiling (raw-u8) is a memcpy from the page cache, 10-20x faster than any decoder, so
">= 50% of the ceiling" is out of reach for a compressed format; the compressed-bytes copy (ceiling) row is
there for the I/O side. zarr pays a per-chunk cost in zarr-python (index lookups, codec pipeline) that
dominates at one cell per chunk: it is the random-access/inspection format, the tars are the training
format. With 2 DataLoader workers on 2 cores, float32 batches cross process boundaries at 4x the uint8 size.
Disk: zstd on the raw .npy bytes is 14-36% larger than PNG on these shot-noise cells (and 5% / 5% / 24% for
WTC / HPA / CP on the `chammi demo` sample release), because PNG predicts each row before deflate; the
"delta+zstd" column shows that a prediction filter would close the gap, at the price of a non-standard member
that plain WebDataset `.npy` decoders could not read - we keep the standard `.npy.zst`."""


def _targets(res: dict) -> list[str]:
    out = []
    for src, r in res["sources"].items():
        rd, d = r["read"], r["disk_MB"]
        speed = rd["tar/w0"]["samples_s"] / rd["png/w0"]["samples_s"]
        speed8 = rd["tar-u8/w0"]["samples_s"] / rd["png-u8/w0"]["samples_s"]
        ceil = rd["tar-u8/w0"]["samples_s"] / rd["raw-u8/w0"]["samples_s"]
        size = d["tar"] / d["png"]
        out.append(f"- {src}: tar vs PNG reader, decode to uint8 {speed8:.1f}x / to float tensors {speed:.1f}x "
                   f"(target >= 5x: {'met' if speed8 >= 5 else 'NOT met'} / {'met' if speed >= 5 else 'NOT met'}); "
                   f"tar-u8 vs uncompressed ceiling {ceil:.0%} (target >= 50%: {'met' if ceil >= 0.5 else 'NOT met'}); "
                   f"disk tar / PNG {size:.2f} (target <= 1: {'met' if size <= 1 else 'NOT met'})")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200, help="cells per source (default 200)")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers for the multi-process runs")
    ap.add_argument("--sources", nargs="+", default=list(SOURCES), help="sources to run")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results", help="results folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--from-json", type=Path, default=None, help="only re-render loader.md from a loader.json")
    args = ap.parse_args(argv)
    if args.from_json is not None:
        md = to_markdown(json.loads(args.from_json.read_text()))
        (args.out / "loader.md").write_text(md)
        print(md)
        return 0
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="chammi_bench_"))
    try:
        res = {"n": args.n, "workers": args.workers, "machine": f"{platform.machine()} {platform.processor() or ''} "
               f"python {sys.version.split()[0]}".strip(), "sources": {}}
        for src in args.sources:
            res["sources"][src] = bench_source(src, args.n, args.workers, work, args.seed)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "loader.json").write_text(json.dumps(res, indent=1) + "\n")
    md = to_markdown(res)
    (args.out / "loader.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
