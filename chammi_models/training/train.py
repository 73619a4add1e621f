"""The training loop: streamed mixed-source batches -> one forward per channel set -> proxy (+SimCLR) loss.

``train(config, release, out_dir, resume=False)`` runs on one CPU/GPU or, under ``torchrun``, on several
processes (``torchrun ... -m chammi_cli train ...``: RANK/WORLD_SIZE/LOCAL_RANK come from the environment; see
``chammi_models.training.distributed``). The command line lives in :mod:`chammi_cli.train`.

Each optimizer step takes one global batch from the deterministic stream (each rank its slice), lets the
:class:`~chammi_models.training.objective.Objective` embed every channel set in one module call, and steps
AdamW + the warm-up cosine schedule. Checkpoints (``chammi_models.training.checkpoint``) make a resumed run
bitwise equal to an uninterrupted one on CPU; a stop signal makes every rank checkpoint at the next step
boundary and return, ready for ``--resume``. A complete run saves its final weights with a card
(``chammi_models.zoo.weights``).
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from chammi_data.format.manifest import read_manifest
from chammi_data.format.release_format import select_rows
from chammi_data.store.storage import ReleaseStore, open_store
from chammi_models.embed import evaluate_model, release_identity
from chammi_models.training.card import training_card
from chammi_models.training.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from chammi_models.training.config import TrainConfig, save_config
from chammi_models.training.distributed import StopSignal, barrier, setup_distributed
from chammi_models.training.metrics_log import MetricsLog
from chammi_models.training.objective import (
    Group,
    Objective,
    build_model,
    class_index,
    global_classes,
    to_groups,
)
from chammi_models.training.schedule import WarmupCosine, build_optimizer, steps_for
from chammi_models.training.ssl import SimCLRLoss
from chammi_models.training.swad import WeightAverager
from chammi_models.training.train_data import TrainData
from chammi_models.zoo.weights import save_model


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


@dataclass
class Context:
    """Where this process trains: the config, the release, the run folder, and its place among the ranks."""

    config: TrainConfig
    release: ReleaseStore
    run_dir: Path
    rank: int
    world: int
    device: torch.device

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


@dataclass
class Plan:
    """The classes a run learns and its length in optimizer steps (fixed by the config and the release)."""

    classes: dict[str, list[str]]  #: {source: sorted training labels}
    table: dict[str, dict[str, int]]  #: {source: {label: global class index}}
    per_epoch: int  #: optimizer steps per epoch
    total: int  #: planned optimizer steps (0: save the untrained model)
    warmup: int  #: warm-up steps


@dataclass
class Parts:
    """Everything the optimizer steps change: what a checkpoint saves and what the run finally keeps."""

    model: nn.Module
    objective: Objective
    optimizer: torch.optim.Optimizer | None
    scheduler: WarmupCosine | None
    scaler: torch.amp.GradScaler
    swad: WeightAverager | None

    def final_model(self) -> nn.Module:
        """The model to evaluate and save: the SWAD average once it exists, else the model being trained."""
        return self.swad.averaged_model() if self.swad is not None and self.swad.active else self.model


@dataclass
class RunPosition:
    """Where a run stands; ``stream_state`` is the stream position to restore once (after a resume)."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    stream_state: dict[str, Any] | None = None


def train(
    config: TrainConfig,
    release: Any,
    out_dir: str | Path,
    resume: bool = False,
    stop_after: int | None = None,
) -> TrainResult:
    """Train ``config`` on the release at ``release``, writing checkpoints/metrics/weights to ``out_dir``.

    Args:
        resume: continue from the latest checkpoint in ``out_dir`` (error if there is none).
        stop_after: stop (with a checkpoint) once this many optimizer steps are done, without changing the
            schedule: simulates an interruption, e.g. a preempted job.
    """
    rank, world, device = setup_distributed(config.run.device)
    ctx = Context(config, open_store(release), Path(out_dir), rank, world, device)
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    plan = plan_run(config, ctx.release, world)
    stop = plan.total if stop_after is None else min(plan.total, stop_after)
    parts = build_parts(config, plan, device)
    position = start_or_resume(ctx, plan, parts, resume)
    wrapped = prepare_forward(ctx, parts)
    log = MetricsLog(ctx.run_dir, enabled=rank == 0)
    result = TrainResult(run_dir=ctx.run_dir, step=position.step, total_steps=plan.total)
    if position.step < stop:
        run_steps(ctx, plan, parts, wrapped, position, stop, log, result)
    result.step = position.step
    if position.step >= plan.total:
        finish_run(ctx, plan, parts, position.step, log, result)
    log.close()
    return result


def plan_run(config: TrainConfig, release: Any, world: int) -> Plan:
    """Classes from the release's Train rows and the run length from their number and the config."""
    d = config.data
    if d.batch_size % world:
        raise ValueError(f"data.batch_size={d.batch_size} is not divisible by the world size {world}")
    manifest = read_manifest(release)
    n_train = len(select_rows(manifest, "train", d.train_sources))
    if config.loss.proxy_lambda == 0:  # no proxies: no classes (CHAMMI-75 has no labels)
        return _plan(config, {}, {s: {} for s in d.train_sources}, n_train)
    classes = class_index(manifest, d.train_sources)
    return _plan(config, classes, global_classes(classes), n_train)


def _plan(
    config: TrainConfig, classes: dict[str, list[str]], table: dict[str, dict[str, int]], n_train: int
) -> Plan:
    """The :class:`Plan` of a run over ``n_train`` training samples."""
    d, o = config.data, config.optim
    if o.max_steps == 0:
        per_epoch, total, warm = 0, 0, 0
    else:
        per_epoch, total, warm = steps_for(
            num_samples=n_train,
            batch_size=d.batch_size,
            epochs=o.epochs,
            warmup_epochs=o.warmup_epochs,
            max_steps=o.max_steps,
            warmup_steps=o.warmup_steps,
        )
    return Plan(classes, table, per_epoch, total, warm)


def build_parts(config: TrainConfig, plan: Plan, device: torch.device) -> Parts:
    """Model, objective, optimizer, schedule and SWAD, identically initialised on every rank from the seed."""
    o, lo, r = config.optim, config.loss, config.run
    torch.manual_seed(r.seed)  # DDP also broadcasts rank 0's weights; the seed makes that a no-op
    model = build_model(config, sum(len(v) for v in plan.classes.values()) if plan.total > 0 else 0).to(
        device
    )
    if device.type == "cuda" and r.channels_last:
        model = model.to(memory_format=torch.channels_last)
    simclr = None
    if lo.ssl_lambda > 0:
        simclr = SimCLRLoss(
            model.num_features,
            temperature=lo.ssl_temperature,
            projection=lo.ssl_projection,
            projection_dim=lo.ssl_projection_dim,
        ).to(device)
    objective = Objective(model, simclr, lo.ssl_lambda, lo.proxy_lambda)
    optimizer = scheduler = None
    if plan.total > 0:
        optimizer = build_optimizer(
            objective.parameters(), lr=o.lr, weight_decay=o.weight_decay, betas=tuple(o.betas)
        )
        scheduler = WarmupCosine(
            optimizer,
            total_steps=plan.total,
            warmup_steps=plan.warmup,
            warmup_start_lr=o.warmup_start_lr,
            min_lr=o.min_lr,
        )
    scaler = torch.amp.GradScaler("cuda", enabled=False)  # bf16 needs no loss scaling; kept for the state
    swad = WeightAverager(model, lo.swad_start) if lo.swad_start is not None else None
    return Parts(model, objective, optimizer, scheduler, scaler, swad)


def start_or_resume(ctx: Context, plan: Plan, parts: Parts, resume: bool) -> RunPosition:
    """A fresh run writes its config; a resumed one restores the latest checkpoint into ``parts``."""
    if not resume:
        if ctx.rank == 0:
            save_config(ctx.config, ctx.run_dir / "config.yaml")
        return RunPosition()
    ckpt = find_checkpoint(ctx.run_dir)
    if ckpt is None:
        raise FileNotFoundError(
            f"--resume: no checkpoint in {ctx.run_dir / 'checkpoints'}; start without --resume"
        )
    saved = load_checkpoint(ckpt, ctx, parts)
    position = RunPosition(saved["step"], saved["epoch"], saved["batch_in_epoch"], saved.get("stream"))
    if plan.per_epoch and position.batch_in_epoch >= plan.per_epoch:  # saved on an epoch boundary
        position = RunPosition(position.step, position.epoch + 1, 0, None)
    return position


def prepare_forward(ctx: Context, parts: Parts) -> nn.Module:
    """The module a step calls: the objective, compiled if asked, wrapped in DDP under torchrun."""
    if ctx.config.run.compile:
        parts.model.compile()  # in place: parameter names (checkpoints, SWAD, saved weights) stay unchanged
    if ctx.world == 1:
        return parts.objective
    # Groups use different first-layer parameters, so some receive no gradient on a given rank.
    return nn.parallel.DistributedDataParallel(
        parts.objective, device_ids=[ctx.device.index] if ctx.cuda else None, find_unused_parameters=True
    )


def train_step(
    wrapped: nn.Module,
    objective: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    groups: list[Group],
    autocast: Any,
    grad_clip: float | None,
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


def run_steps(
    ctx: Context,
    plan: Plan,
    parts: Parts,
    wrapped: nn.Module,
    position: RunPosition,
    stop: int,
    log: MetricsLog,
    result: TrainResult,
) -> None:
    """Take optimizer steps up to ``stop`` (earlier on a stop signal), logging, evaluating and checkpointing.

    ``position`` is advanced in place and ``result.losses`` / ``result.scores`` filled as steps are taken.
    """
    from chammi_data.progress import progress as progress_bar

    config, d, r = ctx.config, ctx.config.data, ctx.config.run
    data = TrainData(config, ctx.release, ctx.rank, ctx.world, ctx.device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if (ctx.cuda and r.amp) else nullcontext()
    bar = progress_bar(
        total=stop, initial=position.step, desc=f"train {config.name}", unit="step", disable=ctx.rank != 0
    )
    t_last, step_last = time.perf_counter(), position.step  # images/s between logged steps
    stopper = StopSignal()
    try:
        while position.step < stop:
            resume_state = position.stream_state if position.batch_in_epoch else None
            position.stream_state = None
            batches = data.epoch_batches(position.epoch, resume_state)
            while position.batch_in_epoch < plan.per_epoch and position.step < stop:
                device_batches = _next_batch(batches, ctx.rank, position, plan.per_epoch)
                groups = to_groups(
                    device_batches,
                    plan.table,
                    ctx.device,
                    parts.objective.simclr is not None,
                    ctx.cuda and r.channels_last,
                )
                loss, sup, ssl, lr = train_step(
                    wrapped,
                    parts.objective,
                    parts.optimizer,
                    parts.scheduler,
                    groups,
                    autocast,
                    config.optim.grad_clip,
                )
                position.step += 1
                position.batch_in_epoch += 1
                if parts.swad is not None:
                    parts.swad.update(parts.model, position.step)
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise FloatingPointError(
                        f"loss became {value} at step {position.step}; lower optim.lr or check the data"
                    )
                result.losses.append(value)
                if stopper.should_stop(ctx.world, ctx.device):
                    stop = position.step  # checkpoint below, then leave both loops
                step = position.step
                if step % r.log_every == 0 or step == stop:
                    now = time.perf_counter()
                    rate = (step - step_last) * d.batch_size / max(now - t_last, 1e-9)
                    t_last, step_last = now, step
                    log.write(
                        "train",
                        step,
                        {
                            "epoch": position.epoch,
                            "loss": value,
                            "loss_proxy": float(sup),
                            "loss_ssl": float(ssl),
                            "lr": lr,
                            "images_per_s": rate,
                        },
                    )
                    bar.set_postfix(loss=f"{value:.4f}", img_s=f"{rate:.1f}")
                bar.update(1)
                if r.eval_every and step % r.eval_every == 0 and step < plan.total:
                    result.scores = evaluate_on_rank0(ctx, parts, log, step)
                if step % r.checkpoint_every == 0 or step == stop:
                    save_checkpoint(ctx, parts, position, stream=data)
            batches.close()
            if position.batch_in_epoch >= plan.per_epoch:
                position.epoch, position.batch_in_epoch = position.epoch + 1, 0
    finally:
        bar.close()
        stopper.restore()


def _next_batch(batches: Any, rank: int, position: RunPosition, per_epoch: int) -> list[dict[str, Any]]:
    """The next list of samples; a stream that ends early means the ranks' shares differ: an error."""
    try:
        return next(batches)
    except StopIteration:
        raise RuntimeError(
            f"rank {rank}: the stream ended after {position.batch_in_epoch} of {per_epoch} "
            f"batches in epoch {position.epoch}; ranks must see equal numbers of samples"
        ) from None


def evaluate_on_rank0(ctx: Context, parts: Parts, log: MetricsLog, step: int) -> dict[str, Any] | None:
    """Embed + score on rank 0 (the SWAD average once it exists); other ranks wait at a barrier."""
    scores = None
    if ctx.rank == 0:
        scores = evaluate_model(
            parts.final_model(), ctx.release, device=ctx.device, **ctx.config.eval_options()
        )
        log.write("eval", step, scores["flat"])
    barrier(ctx.world)
    return scores


def finish_run(
    ctx: Context, plan: Plan, parts: Parts, step: int, log: MetricsLog, result: TrainResult
) -> None:
    """A complete run: the final evaluation (if configured), then rank 0 saves the weights and their card."""
    if ctx.config.run.eval_at_end:
        result.scores = evaluate_on_rank0(ctx, parts, log, step)
    if ctx.rank == 0:
        card = training_card(
            ctx.config,
            classes=plan.classes,
            release=release_identity(ctx.release),
            scores=result.scores,
            step=step,
            swad=parts.swad,
        )
        result.weights_dir = save_model(parts.final_model(), ctx.run_dir / "model", card)
    barrier(ctx.world)
