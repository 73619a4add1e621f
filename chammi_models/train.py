"""The training loop: streamed mixed-source batches -> one forward per channel set -> proxy (+SimCLR) loss.

``train(config, release, out_dir, resume=False)`` runs on one CPU/GPU or, under ``torchrun``, on several
processes (``python -m chammi_models.train`` is the torchrun entry point; RANK/WORLD_SIZE/LOCAL_RANK come
from the environment; NCCL on GPU, gloo on CPU).

Each optimizer step takes one global batch from the deterministic stream (each rank its slice), splits it by
channel set (``group_by_channels``), runs one forward per group inside ONE module call (so DDP sees a
single forward per step), sums the per-group losses weighted by group size / batch, and steps AdamW + the
warm-up cosine schedule. Checkpoints (``chammi_models.checkpoint``) make a resumed run
bitwise equal to an uninterrupted one on CPU. SIGTERM / SIGUSR1 (a scheduler's preemption notice) make every
rank checkpoint at the next step boundary and return, ready for ``--resume``.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import threading
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from chammi_data.collate import group_by_channels
from chammi_data.manifest import read_manifest
from chammi_data.transforms import train_transform
from chammi_data.vocab import SOURCE_KEYS
from chammi_models.checkpoint import barrier, find_checkpoint, load_checkpoint, save_checkpoint
from chammi_models.config import TrainConfig, save_config
from chammi_models.embed import evaluate_model, release_identity, save_final_model
from chammi_models.schedule import WarmupCosine, build_optimizer, steps_for
from chammi_models.ssl import SimCLRLoss, TwoViews, second_views
from chammi_models.swad import WeightAverager


@dataclass
class TrainResult:
    """What a call to :func:`train` did."""

    run_dir: Path
    step: int  #: optimizer steps completed (in total, including steps before a resume)
    total_steps: int  #: planned length of the run
    losses: list[float] = field(default_factory=list)  #: rank-0 loss of every step taken in THIS call
    scores: dict[str, Any] | None = None  #: last evaluation (cps + per-task rows), if any
    weights_dir: Path | None = None  #: final model (safetensors + card) once the run is complete

    @property
    def finished(self) -> bool:
        return self.step >= self.total_steps


def class_index(manifest: Any, sources: Sequence[str]) -> dict[str, list[str]]:
    """{source: sorted training labels} from the release's ``Train`` rows: label -> class index per source.

    The global class index (one proxy per class across sources) is the position in the concatenation of
    these lists in ``SOURCE_KEYS`` order; see :func:`global_classes`.
    """
    out = {}
    for src in SOURCE_KEYS:
        if src not in sources:
            continue
        rows = manifest[(manifest["source"] == src) & (manifest["train_test_split"] == "Train")]
        labels = sorted(set(rows["label"]))
        if not labels:
            raise ValueError(f"the release has no Train rows for source {src!r}; cannot train on it")
        out[src] = labels
    return out


def global_classes(classes: dict[str, list[str]]) -> dict[str, dict[str, int]]:
    """{source: {label: global proxy index}}; sources in ``SOURCE_KEYS`` order, labels sorted."""
    table, offset = {}, 0
    for src in SOURCE_KEYS:
        if src in classes:
            table[src] = {lab: offset + i for i, lab in enumerate(classes[src])}
            offset += len(classes[src])
    return table


class Objective(nn.Module):
    """The model plus everything trained with it; ``forward(groups)`` returns (loss, supervised, ssl).

    ``groups`` is a list of ``(images, channels, targets, source_classes, view2 | None)``. Every group is
    embedded by the same model in this one call, so DDP's reducer sees one forward per step even though the
    first layer differs per channel set.
    """

    def __init__(self, model: nn.Module, simclr: SimCLRLoss | None, ssl_lambda: float) -> None:
        super().__init__()
        self.model = model
        self.simclr = simclr
        self.ssl_lambda = float(ssl_lambda)

    def forward(self, groups: list[tuple[Any, ...]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n_total = sum(g[0].shape[0] for g in groups)
        total = sup_total = ssl_total = None
        for images, channels, targets, classes, view2 in groups:
            b = images.shape[0]
            use_ssl = view2 is not None and self.simclr is not None and b >= 2
            feats = self.model(torch.cat([images, view2]) if use_ssl else images, channels)
            sup = self.model.loss(feats[:b].float(), targets, classes)
            ssl = self.simclr(feats[:b].float(), feats[b:].float()) if use_ssl else sup.new_zeros(())
            weight = b / n_total
            part = (sup + self.ssl_lambda * ssl) * weight
            total = part if total is None else total + part
            sup_total = sup.detach() * weight if sup_total is None else sup_total + sup.detach() * weight
            ssl_total = ssl.detach() * weight if ssl_total is None else ssl_total + ssl.detach() * weight
        assert total is not None and sup_total is not None and ssl_total is not None, "empty batch"
        return total, sup_total, ssl_total


class _StopSignal:
    """SIGTERM/SIGUSR1 -> a request to checkpoint and stop at the next step boundary, agreed by all ranks."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():  # handlers only install there
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def should_stop(self, world: int, device: torch.device) -> bool:
        if world == 1:
            return self.requested
        # Ranks may receive the signal a step apart; a MAX all-reduce makes them stop at the same step.
        flag = torch.tensor([int(self.requested)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def _setup_distributed(device_pref: str) -> tuple[int, int, torch.device]:
    """(rank, world_size, device); initialises the process group when torchrun launched us."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_pref in ("auto", "cuda")
    if device_pref == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("config run.device=cuda but no CUDA device is available")
    device = torch.device(f"cuda:{local}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return rank, world, device


def build_model(config: TrainConfig, num_classes: int) -> nn.Module:
    """The zoo model with ``num_classes`` trainable proxies (``loss.proxy_temperature`` overrides the model's
    own default temperature option when set)."""
    from chammi_models import create_model

    m = config.model
    options = dict(m.options)
    if config.loss.proxy_temperature is not None:
        options["temperature"] = config.loss.proxy_temperature
    return create_model(m.name, backbone=m.backbone, pretrained=m.pretrained, num_classes=num_classes, **options)


def to_groups(samples: list[dict[str, Any]], table: dict[str, dict[str, int]], device: torch.device,
               ssl: bool, channels_last: bool) -> list[tuple[Any, ...]]:
    """Mixed list of samples -> Objective groups on ``device`` (labels -> global class indices)."""
    groups = []
    for batch in group_by_channels(samples):
        src = batch["source"]
        if src not in table:
            raise ValueError(f"batch holds source {src!r} that is not among the training sources {list(table)}")
        try:
            targets = torch.tensor([table[src][lab] for lab in batch["label"]], dtype=torch.long)
        except KeyError as exc:
            raise KeyError(f"label {exc.args[0]!r} of source {src} is not a training label {list(table[src])}") from None
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        images = batch["image"].to(device, non_blocking=True).contiguous(memory_format=fmt)
        view2 = second_views(batch).to(device, non_blocking=True).contiguous(memory_format=fmt) if ssl else None
        classes = torch.tensor(sorted(table[src].values()), dtype=torch.long, device=device)
        groups.append((images, tuple(batch["channels"]), targets.to(device), classes, view2))
    return groups


def train_step(wrapped: nn.Module, objective: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
               groups: list[tuple[Any, ...]], autocast: Any, grad_clip: float | None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """One optimizer step on one global batch: (loss, proxy part, ssl part, learning rate used).

    ``wrapped`` is the DDP wrapper (or ``objective`` itself); clipping acts on the all-reduced gradients.
    """
    objective.train()
    with autocast:
        loss, sup, ssl = wrapped(groups)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(objective.parameters(), grad_clip, foreach=False)
    optimizer.step()
    lr = scheduler.get_last_lr()[0]  # the rate this step used
    scheduler.step()
    return loss, sup, ssl, lr


def make_stream(config: TrainConfig, release: Path, rank: int, world: int) -> Any:
    """The training ShardStream of this rank (TwoViews-wrapped transform when SimCLR is on).

    ``worker_block`` = the per-rank batch, so each DataLoader batch is one worker's contiguous block and
    ``stream.advance(global batch)`` after every step records progress exactly for any worker count.
    """
    from chammi_data import stream

    d = config.data
    transform: Any = train_transform(d.image_size, tuple(d.scale), tuple(d.ratio), hflip=0.5 if d.hflip else 0.0,
                                     tps_p=d.tps_p)
    if config.loss.ssl_lambda > 0:
        transform = TwoViews(transform)
    return stream(release, split="train", sources=list(d.train_sources), seed=config.run.seed,
                  transform=transform, shuffle=True, rank=rank, world_size=world, drop_last=True,
                  worker_block=config.data.batch_size // world)


def train(config: TrainConfig, release: str | Path, out_dir: str | Path, resume: bool = False,
          stop_after: int | None = None) -> TrainResult:
    """Train ``config`` on the release at ``release``, writing checkpoints/metrics/weights to ``out_dir``.

    Args:
        resume: continue from the latest checkpoint in ``out_dir`` (error if there is none).
        stop_after: stop (with a checkpoint) once this many optimizer steps are done, without changing the
            schedule: simulates an interruption, e.g. a preempted job.
    """
    release, run_dir = Path(release), Path(out_dir)
    rank, world, device = _setup_distributed(config.run.device)
    cuda = device.type == "cuda"
    run_dir.mkdir(parents=True, exist_ok=True)
    d, o, lo, r = config.data, config.optim, config.loss, config.run
    if d.batch_size % world:
        raise ValueError(f"data.batch_size={d.batch_size} is not divisible by the world size {world}")
    per_rank = d.batch_size // world
    manifest = read_manifest(release)
    classes = class_index(manifest, d.train_sources)
    table = global_classes(classes)
    n_train = int(((manifest["train_test_split"] == "Train") & manifest["source"].isin(d.train_sources)).sum())
    if o.max_steps == 0:
        per_epoch, total, warm = 0, 0, 0
    else:
        per_epoch, total, warm = steps_for(num_samples=n_train, batch_size=d.batch_size, epochs=o.epochs,
                                           warmup_epochs=o.warmup_epochs, max_steps=o.max_steps,
                                           warmup_steps=o.warmup_steps)
    stop = total if stop_after is None else min(total, stop_after)

    torch.manual_seed(r.seed)  # identical initialisation on every rank (DDP also broadcasts rank 0's)
    model = build_model(config, sum(len(v) for v in classes.values()) if total > 0 else 0).to(device)
    if cuda and r.channels_last:
        model = model.to(memory_format=torch.channels_last)
    simclr = None
    if lo.ssl_lambda > 0:
        simclr = SimCLRLoss(model.num_features, temperature=lo.ssl_temperature, projection=lo.ssl_projection,
                            projection_dim=lo.ssl_projection_dim).to(device)
    objective = Objective(model, simclr, lo.ssl_lambda)
    optimizer = scheduler = None
    if total > 0:
        optimizer = build_optimizer(objective.parameters(), lr=o.lr, weight_decay=o.weight_decay, betas=tuple(o.betas))
        scheduler = WarmupCosine(optimizer, total_steps=total, warmup_steps=warm, warmup_start_lr=o.warmup_start_lr,
                                 min_lr=o.min_lr)
    scaler = torch.amp.GradScaler("cuda", enabled=False)  # bf16 needs no loss scaling; kept for the state
    swad = WeightAverager(model, lo.swad_start) if lo.swad_start is not None else None

    step, epoch, batch_in_epoch, stream_state = 0, 0, 0, None
    if resume:
        ckpt = find_checkpoint(run_dir)
        if ckpt is None:
            raise FileNotFoundError(f"--resume: no checkpoint in {run_dir / 'checkpoints'}; start without --resume")
        progress = load_checkpoint(ckpt, rank=rank, world=world, objective=objective, optimizer=optimizer,
                                   scheduler=scheduler, scaler=scaler, swad=swad, config=config)
        step, epoch, batch_in_epoch = progress["step"], progress["epoch"], progress["batch_in_epoch"]
        stream_state = progress.get("stream")
        if per_epoch and batch_in_epoch >= per_epoch:  # saved on an epoch boundary
            epoch, batch_in_epoch, stream_state = epoch + 1, 0, None
    elif rank == 0:
        save_config(config, run_dir / "config.yaml")

    if r.compile:
        model.compile()  # in place: parameter names (checkpoints, SWAD, saved weights) stay unchanged
    wrapped: nn.Module = objective
    if world > 1:
        # Groups use different first-layer parameters, so some receive no gradient on a given rank.
        wrapped = nn.parallel.DistributedDataParallel(objective, device_ids=[device.index] if cuda else None,
                                                      find_unused_parameters=True)
    log = MetricsLog(run_dir, enabled=rank == 0)
    result = TrainResult(run_dir=run_dir, step=step, total_steps=total)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if (cuda and r.amp) else nullcontext()

    if step < stop:
        stream = make_stream(config, release, rank, world)
        loader = DataLoader(stream, batch_size=per_rank, collate_fn=list, num_workers=d.workers, drop_last=True,
                            pin_memory=cuda, persistent_workers=False)
        from tqdm.auto import tqdm

        bar = tqdm(total=stop, initial=step, desc=f"train {config.name}", unit="step", disable=rank != 0,
                   dynamic_ncols=True)
        t_last, step_last = time.perf_counter(), step
        stopper = _StopSignal()
        while step < stop:
            stream.set_epoch(epoch)
            if batch_in_epoch and stream_state is not None:
                stream.load_state_dict(stream_state)
            stream_state = None
            batches = iter(loader)
            while batch_in_epoch < per_epoch and step < stop:
                try:
                    samples = next(batches)
                except StopIteration:
                    raise RuntimeError(f"rank {rank}: the stream ended after {batch_in_epoch} of {per_epoch} "
                                       f"batches in epoch {epoch}; ranks must see equal numbers of samples") from None
                groups = to_groups(samples, table, device, simclr is not None, cuda and r.channels_last)
                loss, sup, ssl, lr = train_step(wrapped, objective, optimizer, scheduler, groups, autocast, o.grad_clip)
                step += 1
                batch_in_epoch += 1
                stream.advance(d.batch_size)
                if swad is not None:
                    swad.update(model, step)
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise FloatingPointError(f"loss became {value} at step {step}; lower optim.lr or check the data")
                result.losses.append(value)
                if stopper.should_stop(world, device):
                    stop = step  # checkpoint below, then leave both loops
                if step % r.log_every == 0 or step == stop:
                    now = time.perf_counter()
                    rate = (step - step_last) * d.batch_size / max(now - t_last, 1e-9)
                    t_last, step_last = now, step
                    log.write("train", step, {"epoch": epoch, "loss": value, "loss_proxy": float(sup),
                                              "loss_ssl": float(ssl), "lr": lr,
                                              "images_per_s": rate})
                    bar.set_postfix(loss=f"{value:.4f}", img_s=f"{rate:.1f}")
                bar.update(1)
                if r.eval_every and step % r.eval_every == 0 and step < total:
                    result.scores = _evaluate(config, release, swad, model, device, rank, world, log, step)
                if step % r.checkpoint_every == 0 or step == stop:
                    save_checkpoint(run_dir, rank=rank, world=world, step=step, epoch=epoch,
                                    batch_in_epoch=batch_in_epoch, stream=stream, objective=objective,
                                    optimizer=optimizer, scheduler=scheduler, scaler=scaler, swad=swad,
                                    config=config)
            del batches
            if batch_in_epoch >= per_epoch:
                epoch, batch_in_epoch = epoch + 1, 0
        bar.close()
        stopper.restore()
    result.step = step
    if step >= total:
        if r.eval_at_end:
            result.scores = _evaluate(config, release, swad, model, device, rank, world, log, step)
        if rank == 0:
            final = swad.averaged_model() if swad is not None and swad.active else model
            result.weights_dir = save_final_model(final, run_dir / "model", config=config, classes=classes,
                                                  release=release_identity(release), scores=result.scores,
                                                  step=step, swad=swad)
        barrier(world)
    log.close()
    return result


def _evaluate(config: TrainConfig, release: Path, swad: WeightAverager | None, model: nn.Module,
              device: torch.device, rank: int, world: int, log: MetricsLog, step: int) -> dict[str, Any] | None:
    """Embed + score on rank 0 (the SWAD average once it exists); other ranks wait at a barrier."""
    scores = None
    if rank == 0:
        target = swad.averaged_model() if swad is not None and swad.active else model
        scores = evaluate_model(target, release, sources=config.data.eval_sources, image_size=config.data.image_size,
                                batch_size=config.data.eval_batch_size, workers=config.data.workers, device=device,
                                metric=config.run.eval_metric, amp=config.run.amp)
        log.write("eval", step, scores["flat"])
    barrier(world)
    return scores


# -- checkpoints -----------------------------------------------------------------------------------------
# RUN_DIR/checkpoints/step-000123/ holds state.pt (model, proxies, optimizer, scheduler, scaler, SWAD: tensors
# and plain containers, loaded with weights_only=True), rank<r>.pt (that rank's torch RNG states) and
# rank<r>.json (step, epoch, stream state, python/numpy RNG). RUN_DIR/checkpoints/latest.json is written
# last, after a barrier, so a crash mid-save leaves the previous checkpoint as the latest complete one.
class MetricsLog:
    """Appends metrics to RUN_DIR/metrics.jsonl (one object per row) and metrics.csv (long format:
    kind, step, name, value), and to TensorBoard when it is installed. Only rank 0 writes."""

    def __init__(self, run_dir: Path, enabled: bool = True) -> None:
        self.enabled = enabled
        self.jsonl = run_dir / "metrics.jsonl"
        self.csv = run_dir / "metrics.csv"
        self.tb = None
        if enabled:
            if not self.csv.exists():
                self.csv.write_text("kind,step,name,value\n")
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except Exception:  # tensorboard is optional
                self.tb = None

    def write(self, kind: str, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.jsonl, "a") as fh:
            fh.write(json.dumps({"kind": kind, "step": step, "time": time.time(), **values}) + "\n")
        with open(self.csv, "a", newline="") as fh:
            writer = csv.writer(fh)
            for name, value in values.items():
                writer.writerow([kind, step, name, value])
                if self.tb is not None and isinstance(value, int | float) and value is not None:
                    self.tb.add_scalar(f"{kind}/{name}", value, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def main(argv: list[str] | None = None) -> int:
    """torchrun entry point: same arguments as ``chammi train``."""
    import argparse

    from chammi_models.cli import train as cli_train

    parser = argparse.ArgumentParser(prog="python -m chammi_models.train", description="train a CHAMMI model")
    cli_train.register(parser)
    code = cli_train.main(parser.parse_args(argv))
    if dist.is_initialized():
        dist.destroy_process_group()
    return code


if __name__ == "__main__":
    raise SystemExit(main())
