"""The dask cluster of a build: a local one of single-threaded worker processes, or an existing scheduler."""

from __future__ import annotations

import logging
import os
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

    ``scheduler`` (an address): connect to it; its workers must see the output folder, and the cluster
    outlives the build. Otherwise a ``LocalCluster`` of ``workers`` workers with one thread each, as processes
    (``processes=False``: threads, for tests).
    """
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
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        cluster = LocalCluster(
            n_workers=max(1, int(workers)),
            threads_per_worker=1,
            processes=processes,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()
