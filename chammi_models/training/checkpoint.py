"""Training checkpoints: everything a resumed run needs to continue bitwise-identically on CPU.

Layout of ``RUN_DIR/checkpoints/``:

- ``step-NNNNNNN/`` (the step count in 7 digits, e.g. ``step-0000123``), one per saved step, holding
  ``state.pt`` (model + proxies + SimCLR head, optimizer, schedule, scaler, SWAD average: tensors and plain
  containers, loaded with ``weights_only=True``) and, per rank r, ``rank<r>.pt`` (torch/CUDA RNG states) and
  ``rank<r>.json`` (step, epoch, stream position, Python and numpy RNG states). The newest
  ``KEEP_CHECKPOINTS`` folders are kept.
- ``latest.json`` (the folder name, step, world size and config), written last, after a barrier, so a crash
  while saving leaves the previous checkpoint as the latest complete one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from chammi_models.training.config import TrainConfig
from chammi_models.training.distributed import barrier
from chammi_models.training.swad import WeightAverager

#: How many step folders stay on disk (older ones are deleted after a new one is complete).
KEEP_CHECKPOINTS = 2


class RunPlace(Protocol):
    """Where a process trains (``train.Context``): its run folder, config and place among the ranks."""

    run_dir: Path
    config: TrainConfig
    rank: int
    world: int


class TrainingState(Protocol):
    """What the optimizer steps change (``train.Parts``): all of it is saved and restored."""

    objective: nn.Module
    optimizer: Any
    scheduler: Any
    scaler: Any
    swad: WeightAverager | None


class Position(Protocol):
    """Where a run stands (``train.RunPosition``)."""

    step: int
    epoch: int
    batch_in_epoch: int


class UnsafeCheckpointError(ValueError):
    """A checkpoint file that holds more than tensors and plain containers: it is never unpickled."""


def _safe_load(path: Path) -> Any:
    """``torch.load`` with ``weights_only=True``; a file it refuses becomes :class:`UnsafeCheckpointError`
    naming the file and what it holds, without torch's advice to load it unsafely."""
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = [line.strip() for line in str(exc).splitlines() if "GLOBAL" in line or "Unsupported" in line]
        what = f" ({found[0].rstrip('.')})" if found else ""
        raise UnsafeCheckpointError(
            f"{path} is not a safe checkpoint: it holds Python objects beyond tensors and plain containers"
            f"{what}; it was not loaded. Resume only from checkpoints that `chammi train` wrote."
        ) from None


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".json":
        tmp.write_text(json.dumps(obj, indent=1))
    else:
        torch.save(obj, tmp)
    os.replace(tmp, path)


def save_checkpoint(place: RunPlace, parts: TrainingState, position: Position, stream: Any) -> Path:
    """Write a complete checkpoint of ``position`` (every rank calls this); returns its folder. ``stream`` is
    the loader whose ``state_dict()`` is the stream position."""
    rank, world, step = place.rank, place.world, position.step
    root = place.run_dir / "checkpoints"
    folder = root / f"step-{step:07d}"
    folder.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        state = {
            "objective": parts.objective.state_dict(),
            "optimizer": parts.optimizer.state_dict(),
            "scheduler": parts.scheduler.state_dict(),
            "scaler": parts.scaler.state_dict(),
        }
        if parts.swad is not None:
            state["swad"] = parts.swad.state_dict()
        _atomic_save(state, folder / "state.pt")
    np_name, np_keys, np_pos, np_gauss, np_cached = np.random.get_state()
    rng = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
    }
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    _atomic_save(rng, folder / f"rank{rank}.pt")
    py_version, py_state, py_gauss = random.getstate()
    _atomic_save(
        {
            "step": step,
            "epoch": position.epoch,
            "batch_in_epoch": position.batch_in_epoch,
            "world_size": world,
            "stream": stream.state_dict(),
            "python_rng": [py_version, list(py_state), py_gauss],
            "numpy_rng": [np_name, int(np_pos), int(np_gauss), float(np_cached)],
        },
        folder / f"rank{rank}.json",
    )
    barrier(world)
    if rank == 0:
        _atomic_save(
            {"step": step, "path": folder.name, "world_size": world, "config": place.config.to_dict()},
            root / "latest.json",
        )
        for old in sorted(root.glob("step-*"))[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)
    barrier(world)
    return folder


def find_checkpoint(run_dir: Path) -> Path | None:
    """The latest complete checkpoint folder of a run, or None."""
    latest = run_dir / "checkpoints" / "latest.json"
    if not latest.is_file():
        return None
    return run_dir / "checkpoints" / json.loads(latest.read_text())["path"]


def load_checkpoint(folder: Path, place: RunPlace, parts: TrainingState) -> dict[str, Any]:
    """Restore everything saved by :func:`save_checkpoint` into ``parts``; returns this rank's progress
    record."""
    rank, world = place.rank, place.world
    progress_path = folder / f"rank{rank}.json"
    if not progress_path.is_file():
        raise FileNotFoundError(
            f"{progress_path} missing: checkpoint {folder} was written by a run with a different "
            f"number of processes; resume with the same world size"
        )
    progress = json.loads(progress_path.read_text())
    if progress["world_size"] != world:
        raise ValueError(
            f"checkpoint {folder} was written with world size {progress['world_size']}, now {world}"
        )
    # run.* (logging, checkpoint/eval cadence, device) may change on resume; the seed and the rest may not.
    saved = json.loads((folder.parent / "latest.json").read_text())["config"]
    now = place.config.to_dict()
    diff = sorted(k for k in saved if k != "run" and saved[k] != now.get(k))
    diff += ["run.seed"] if saved["run"]["seed"] != now["run"]["seed"] else []
    if diff:
        raise ValueError(
            f"--resume with a config that differs from the checkpoint's in section(s) {diff}; "
            f"resume with the run's own config ({folder.parent.parent / 'config.yaml'})"
        )
    state = _safe_load(folder / "state.pt")
    parts.objective.load_state_dict(state["objective"])
    parts.optimizer.load_state_dict(state["optimizer"])
    parts.scheduler.load_state_dict(state["scheduler"])
    parts.scaler.load_state_dict(state["scaler"])
    if parts.swad is not None:
        parts.swad.load_state_dict(state["swad"])
    rng = _safe_load(folder / f"rank{rank}.pt")
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    name, pos, gauss, cached = progress["numpy_rng"]
    np.random.set_state((name, rng["numpy_keys"].numpy().astype(np.uint32), pos, gauss, cached))
    version, py_state, py_gauss = progress["python_rng"]
    random.setstate((version, tuple(py_state), py_gauss))
    return progress
