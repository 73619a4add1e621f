"""Process-group set-up for ``torchrun`` and the stop signal every rank agrees on.

A single process (no ``WORLD_SIZE`` in the environment) needs no process group; under ``torchrun`` the
group is NCCL on GPUs and gloo on CPUs. SIGTERM / SIGUSR1 (a scheduler's preemption notice) may reach ranks a
step apart, so :class:`StopSignal` all-reduces the request and every rank stops at the same step.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import torch
import torch.distributed as dist


def setup_distributed(device_pref: str) -> tuple[int, int, torch.device]:
    """(rank, world_size, device); initialises the process group when torchrun launched us.

    ``device_pref`` is ``run.device``: auto | cpu | cuda (cuda without a GPU is an error).
    """
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


def shutdown_distributed() -> None:
    """Destroy the process group if one exists (the end of a torchrun process)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: int) -> None:
    """Wait for every rank (nothing to wait for in a single process)."""
    if world > 1:
        dist.barrier()


class StopSignal:
    """SIGTERM/SIGUSR1 -> a request to checkpoint and stop at the next step boundary, agreed by all ranks.

    Handlers are installed on construction (main thread only: Python allows no other) and put back by
    :meth:`restore`.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def should_stop(self, world: int, device: torch.device) -> bool:
        """Whether any rank was asked to stop (a collective call: every rank must make it at each step)."""
        if world == 1:
            return self.requested
        flag = torch.tensor([int(self.requested)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def restore(self) -> None:
        """Put back the handlers that were installed before."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
