"""Training throughput of every zoo model relative to the plain timm ConvNeXt, measured in the same run.

For each model and each source's channel set (WTC 3, HPA 4, CP 5 channels) it times forward + backward
(proxy loss where the model has proxies, else the mean square of the features) on random images, and
compares images/s with a plain timm ConvNeXt of the same backbone whose stem takes the same C channels
(``forward_features`` + average pool). Model and baseline steps alternate so that both see the same
load on a shared machine. Results go to a Markdown table with the machine description.

    python benchmarks/models.py                       # CPU (1 thread), convnext_tiny, 64x64, batch 8
    python benchmarks/models.py --device cuda --size 224 --batch 64 --steps 10
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import timm
import torch
from tqdm import tqdm

from chammi_data.format.vocab import SOURCES
from chammi_models import create_model, list_models

RESULTS = Path(__file__).resolve().parent / "results" / "models.md"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_pair(
    model_step: Callable[[torch.Tensor, tuple[str, ...]], torch.Tensor],
    base_step: Callable[[torch.Tensor, tuple[str, ...]], torch.Tensor],
    batch: int,
    size: int,
    steps: int,
    warmup: int,
    device: torch.device,
) -> tuple[int, float, float]:
    """(images, model seconds, baseline seconds) for forward+backward steps on each source's channels.

    Model and baseline steps alternate, so both see the same load on a shared machine and their ratio is
    far steadier than either number alone.
    """
    images, t_model, t_base = 0, 0.0, 0.0
    for info in SOURCES.values():
        x = torch.randn(batch, len(info.channels), size, size, device=device)
        for _ in range(warmup):
            model_step(x, info.channels).backward()
            base_step(x, info.channels).backward()
        for _ in range(steps):
            for fn in (model_step, base_step):
                _sync(device)
                start = time.perf_counter()
                fn(x, info.channels).backward()
                _sync(device)
                elapsed = time.perf_counter() - start
                if fn is model_step:
                    t_model += elapsed
                else:
                    t_base += elapsed
        images += steps * batch
    return images, t_model, t_base


def baseline_step(backbone: str, device: torch.device) -> Callable:
    """Plain timm ConvNeXt per channel count: pooled ``forward_features``, mean-square loss."""
    nets = {
        c: timm.create_model(backbone, pretrained=False, num_classes=0, in_chans=c).to(device).train()
        for c in {len(i.channels) for i in SOURCES.values()}
    }

    def step(x: torch.Tensor, chans: tuple[str, ...]) -> torch.Tensor:
        return nets[x.shape[1]].forward_features(x).mean((2, 3)).square().mean()

    return step


def model_step(name: str, backbone: str, size: int, device: torch.device) -> Callable:
    options = {"img_size": size} if name == "channel_vit" else {}
    model = create_model(name, backbone=backbone, **options).to(device).train()
    targets = None

    def step(x: torch.Tensor, chans: tuple[str, ...]) -> torch.Tensor:
        nonlocal targets
        feats = model(x, chans)
        if model.proxy_loss is None:
            return feats.square().mean()
        if targets is None or targets.shape[0] != x.shape[0]:
            targets = torch.arange(x.shape[0], device=device) % model.proxy_loss.num_classes
        return model.loss(feats, targets)

    return step


def machine(device: torch.device) -> str:
    parts = [
        f"{platform.system()} {platform.machine()}",
        f"{torch.get_num_threads()} torch threads",
        f"python {platform.python_version()}",
        f"torch {torch.__version__}",
        f"timm {timm.__version__}",
    ]
    if device.type == "cuda":
        parts.insert(0, torch.cuda.get_device_name(device))
    else:
        cpu = platform.processor() or "cpu"
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        import os

        load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
        parts.insert(0, f"{cpu} ({os.cpu_count()} logical CPUs visible, load average {load} at the end)")
    return ", ".join(parts)


def run(args: argparse.Namespace) -> str:
    device = torch.device(args.device)
    torch.manual_seed(0)
    names = args.models or list_models()
    base = baseline_step(args.backbone, device)
    timings: dict[str, tuple[int, float, float]] = {}
    for name in tqdm(names, desc="models", unit="model"):
        step = model_step(name, args.backbone, args.size, device)
        timings[name] = time_pair(step, base, args.batch, args.size, args.steps, args.warmup, device)
        del step
    base_ips = sum(n for n, _, _ in timings.values()) / sum(b for _, _, b in timings.values())
    lines = [
        "# Model zoo throughput (forward + backward)",
        "",
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {machine(device)}",
        f"- device: {device.type}; backbone {args.backbone}; input {args.size}x{args.size}; batch "
        f"{args.batch}; "
        f"{args.steps} timed steps after {args.warmup} warm-up per source, sources WTC (3 ch), HPA (4), CP "
        "(5)",
        f"- baseline: plain timm {args.backbone} with a C-input stem (pooled forward_features), timed in "
        f"alternation with each model; {base_ips:.1f} images/s over the whole run",
        "- relative = baseline seconds / model seconds over the same alternating steps (steadier than the "
        "absolute images/s on a shared machine)",
        "- channel_vit uses its default size (D=192, depth 6, patch 16), not the backbone",
        "",
        "| model | images/s | baseline images/s (same steps) | relative to plain ConvNeXt |",
        "|---|---:|---:|---:|",
    ]
    for name, (n, t_model, t_base) in timings.items():
        lines.append(f"| {name} | {n / t_model:.1f} | {n / t_base:.1f} | {t_base / t_model:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="convnext_tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=64, help="input side in pixels (multiple of 32)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: a shared CPU makes OpenMP spin; 0 = torch default)",
    )
    parser.add_argument("--models", nargs="*", help="subset of list_models() (default: all)")
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help="Markdown file to write ('-' = stdout only)"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run(args)
    print(report)
    if str(args.out) != "-":
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
