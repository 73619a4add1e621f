"""Training throughput per strategy: the real streaming loader vs device-resident synthetic tensors, one run.

    python benchmarks/train_throughput.py                           # GPU: convnext_tiny, 224 px, batch 128
    python benchmarks/train_throughput.py --device cpu --backbone convnext_atto --size 64 --batch 16 \\
        --steps 4 --warmup 1 --workers 2 --cells 64 --strategies depthwise hypernet

For every strategy the SAME training step (``chammi_models.training.train.train_step``: one forward per
channel group, proxy loss, AdamW + schedule, grad clipping, bf16 autocast + channels_last on CUDA) is timed
twice:

- ``loader``: batches from the trainer's own data path (``chammi_models.training.train_data.TrainData``) over
  a release written to a temporary folder (cells at the REAL tile sizes: WTC 238x374x3, HPA 512x512x4, CP
  160x160x5): ``--workers`` persistent DataLoader workers read, decode and stack integer batches per channel
  set, and the paper's augmentation runs on the device, exactly as ``chammi train`` feeds the model;
- ``synthetic``: pre-made batches with the same group sizes, already on the device (the model's ceiling).

The ratio loader / synthetic says whether the input pipeline keeps the accelerator busy (target >= 0.9 with
16 workers on one GPU). Results are appended as a table to ``--out`` (a markdown file) naming the device.
"""

from __future__ import annotations

import argparse
import itertools
import platform
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from chammi_data.format.manifest import read_manifest
from chammi_data.format.schema import Cell, make_cell_id
from chammi_data.format.vocab import SOURCES
from chammi_data.format.writer import ReleaseWriter
from chammi_models.training.config import config_from_dict
from chammi_models.training.objective import Objective, build_model, class_index, global_classes, to_groups
from chammi_models.training.schedule import WarmupCosine, build_optimizer
from chammi_models.training.train import train_step
from chammi_models.training.train_data import TrainData

STRATEGIES = ("fixed_channels", "target_param", "slice_param", "template_mixing", "hypernet", "depthwise")
_LABELS = {
    "wtc11": ["M0", "M1M2", "M3"],
    "hpa": ["Golgi apparatus", "Microtubules"],
    "cp": ["DMSO", "BRD-A29260609"],
}


def write_release(root: Path, cells_per_source: int, seed: int = 0) -> None:
    """A Train-only release with cells at the real tile sizes; texture = upsampled noise (compresses like
    smooth microscopy, so zstd decoding costs what it costs on real data)."""
    rng = np.random.default_rng(seed)
    writer = ReleaseWriter(root, cells_per_shard=64, config={"benchmark": "train_throughput"})
    for key, info in SOURCES.items():
        h, w = info.tile_hw
        cells = []
        for i in range(cells_per_source):
            low = rng.integers(0, 90, size=(info.num_channels, h // 8 + 1, w // 8 + 1), dtype=np.uint8)
            img = low.repeat(8, axis=1).repeat(8, axis=2)[:, :h, :w]
            img = np.clip(img.astype(np.int16) + rng.integers(0, 12, img.shape), 0, 255).astype(np.uint8)
            cells.append(
                Cell(
                    image=img,
                    channels=info.channels,
                    source=key,
                    label=_LABELS[key][i % len(_LABELS[key])],
                    cell_id=make_cell_id(key, "bench", i),
                    split="Train",
                    groups={info.group_column: "g0"},
                )
            )
        writer.add_source(key, sorted(cells, key=lambda c: c.cell_id))
    writer.close()


def _config(args: argparse.Namespace, name: str):
    return config_from_dict(
        {
            "name": f"bench_{name}",
            "model": {"name": name, "backbone": args.backbone},
            "data": {"image_size": args.size, "batch_size": args.batch, "workers": args.workers},
            "optim": {"max_steps": 10_000, "warmup_steps": 10},
            "run": {
                "device": "cuda" if args.device.startswith("cuda") else "cpu",
                "amp": True,
                "channels_last": True,
            },
        }
    )


def _time_steps(batches, step_fn, steps: int, warmup: int, device: torch.device, desc: str) -> float:
    """Images per second over ``steps`` timed steps after ``warmup`` untimed ones (includes input waits)."""
    it = iter(batches)
    for _ in range(warmup):
        step_fn(next(it))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0, images = time.perf_counter(), 0
    for _ in tqdm(range(steps), desc=desc, leave=False):
        groups = next(it)
        images += sum(g[0].shape[0] for g in groups)
        step_fn(groups)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return images / (time.perf_counter() - t0)


def bench(args: argparse.Namespace, release: Path, name: str) -> dict[str, float]:
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    cfg = _config(args, name)
    table = global_classes(class_index(read_manifest(release), list(SOURCES)))
    torch.manual_seed(0)
    model = build_model(cfg, sum(len(v) for v in table.values())).to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    objective = Objective(model, None, 0.0)
    optimizer = build_optimizer(objective.parameters(), lr=1e-4, weight_decay=5e-5)
    scheduler = WarmupCosine(
        optimizer, total_steps=10_000, warmup_steps=10, warmup_start_lr=1e-5, min_lr=1e-6
    )
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()

    def step_fn(groups):
        train_step(objective, objective, optimizer, scheduler, groups, autocast, 1.0)

    data = TrainData(cfg, release, 0, 1, device)

    def real_batches():
        for epoch in itertools.count():
            for batches in data.epoch_batches(epoch):
                yield to_groups(batches, table, device, False, cuda)

    real = _time_steps(real_batches(), step_fn, args.steps, args.warmup, device, f"{name} loader")
    # Synthetic: the first real batch's group sizes, random tensors resident on the device.
    first = next(real_batches())
    synthetic_groups = [(torch.randn_like(g[0]), g[1], g[2], g[3], None) for g in first]
    synthetic = _time_steps(
        itertools.repeat(synthetic_groups), step_fn, args.steps, args.warmup, device, f"{name} synthetic"
    )
    return {"loader": real, "synthetic": synthetic, "ratio": real / synthetic}


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--strategies", nargs="*", default=list(STRATEGIES), choices=list(STRATEGIES))
    p.add_argument("--backbone", default="convnext_tiny")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="timed steps per mode")
    p.add_argument(
        "--warmup", type=int, default=3, help="untimed steps per mode (cudnn autotune, worker start)"
    )
    p.add_argument("--workers", type=int, default=16)
    p.add_argument("--cells", type=int, default=1024, help="cells per source in the temporary release")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU runs)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "train_throughput.md")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    with tempfile.TemporaryDirectory(prefix="chammi-bench-") as tmp:
        release = Path(tmp) / "release"
        t0 = time.perf_counter()
        write_release(release, args.cells)
        print(f"wrote a {3 * args.cells}-cell release in {time.perf_counter() - t0:.1f} s")
        rows = [(name, bench(args, release, name)) for name in args.strategies]
    lines = [
        f"\n## {device_name(args.device)}: {args.backbone}, {args.size} px, batch {args.batch}, "
        f"{args.workers} workers",
        "",
        f"`python benchmarks/train_throughput.py {' '.join(sys.argv[1:] if argv is None else argv)}` "
        f"(torch {torch.__version__}; {args.steps} timed steps after {args.warmup} warm-up steps per mode)",
        "",
        "| strategy | loader img/s | synthetic img/s | loader / synthetic |",
        "|---|---|---|---|",
    ]
    lines += [f"| {n} | {r['loader']:.1f} | {r['synthetic']:.1f} | {r['ratio']:.2f} |" for n, r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as fh:
        fh.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
