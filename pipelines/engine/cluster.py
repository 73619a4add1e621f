"""The dask cluster of a build: a local one of single-threaded worker processes, or an existing scheduler.

A user's terminal sees the build, not dask: dask's own log lines (a worker's heartbeat failing while the
cluster shuts down, a reconnect) are kept below CRITICAL in the build's process and in the local workers, and
the local worker processes ignore SIGINT, so Ctrl-C stops the build with one line (exit 130) and the build
closes its cluster - workers, nannies and scheduler - instead of every process printing a traceback.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from chammi_data.errors import UserError

#: Environment variable: seconds to wait for an existing scheduler to answer before the build stops with an
#: error (default 20).
CONNECT_TIMEOUT_ENV = "CHAMMI_SCHEDULER_TIMEOUT_S"


@contextmanager
def start_cluster(workers: int, scheduler: str | None = None, processes: bool = True) -> Iterator[Any]:
    """A ``dask.distributed.Client``, closed on exit (with its cluster when this function started one).

    ``scheduler`` (an address): connect to it (the cluster outlives the build; its workers need no disk
    shared with this machine when the output is an object store). Otherwise a ``LocalCluster`` of ``workers``
    workers with one thread each, as processes (``processes=False``: threads, for tests).
    """
    quiet = logging.getLogger("distributed")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        yield from _cluster(workers, scheduler, processes)
    finally:
        quiet.setLevel(level)


def _cluster(workers: int, scheduler: str | None, processes: bool) -> Iterator[Any]:
    import dask
    from dask.distributed import Client, LocalCluster

    if scheduler:
        timeout = float(os.environ.get(CONNECT_TIMEOUT_ENV) or 20)
        try:
            client = Client(scheduler, timeout=timeout)
        except (OSError, TimeoutError) as exc:
            raise UserError(
                f"cannot reach the dask scheduler at {scheduler} within {timeout:g} s "
                f"({type(exc).__name__}: {' '.join(str(exc).split()) or 'no answer'}); is `dask scheduler` "
                "running there, and is the address reachable from this machine?"
            ) from None
        try:
            yield client
        finally:
            client.close()
        return
    # dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536 in every worker. In glibc any explicit trim threshold
    # also freezes the mmap threshold at 128 KiB, so every image-sized numpy array becomes a fresh mmap with
    # its page faults, and units run markedly slower in a worker than in-process. Unset, they run at the same
    # speed.
    # worker processes started while SIGINT is ignored keep ignoring it (the disposition survives exec):
    # Ctrl-C reaches the build only, which then closes the cluster
    main = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGINT, signal.SIG_IGN) if main and processes else None
    try:
        with (
            dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")  # "port 8787 is in use": another cluster on this machine
            cluster = LocalCluster(
                n_workers=max(1, int(workers)),
                threads_per_worker=1,
                processes=processes,
                dashboard_address=None,
                silence_logs=logging.CRITICAL,
            )
    finally:
        if old is not None:
            signal.signal(signal.SIGINT, old)
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def blind_workers(client: Any, check: Any, *args: Any) -> list[str]:
    """The workers on which ``check(*args)`` is false (e.g. ``os.path.isdir(folder)``: they cannot see it)."""
    return sorted(w for w, ok in client.run(check, *args).items() if not ok)
