"""A stalled or killed server never hangs a reader: real servers on 127.0.0.1 (moto's S3 server, the Range
HTTP server), stopped with SIGSTOP or SIGKILL after a few samples, for ``load`` and for ``stream`` read by two
DataLoader workers. Each fault must become ONE ``RemoteReadError`` naming the URL and the byte range within
the deadline (set short here through ``$CHAMMI_REMOTE_TIMEOUT_S`` / ``$CHAMMI_REMOTE_DEADLINE_S``, the way a
user would), and leave no worker process behind.
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import torch.utils.data._utils
from torch.utils.data import DataLoader

import chammi_data
from chammi_data.loading.dataset import ReleaseDataset
from chammi_data.store.remote import DEADLINE_ENV, TIMEOUT_ENV, RetryPolicy, env_seconds
from chammi_data.store.storage import ReleaseStore, RemoteReadError
from tests.conftest import make_cells
from tests.servers import HTTPServer, S3Server, descendants, in_session

T = TypeVar("T")

TIMEOUT_S, DEADLINE_S = 1.5, 5.0
#: what "bounded" means here: the deadline, plus process and thread start-up on a busy 2-core machine
BOUND_S = DEADLINE_S + 8.0


def _before_the_fault(setup: Callable[[], T]) -> T:
    """``setup()`` (open a reader, read a few cells), tried up to 3 times. On a loaded machine a new client's
    first request (its TLS contexts built in a thread, the server's first answer) can outlast the short
    per-request timeout this module sets; that happens before any fault and is not what is tested here
    (CI's machine failed it once). What follows the fault is measured without such a second chance."""
    for _ in range(2):
        try:
            return setup()
        except RemoteReadError:
            time.sleep(1.0)
    return setup()


@pytest.fixture(scope="module")
def small_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A release of 2 cells per shard (18 shards), so that a stream is still reading when the server
    stops."""
    from chammi_data.format.writer import ReleaseWriter

    root = tmp_path_factory.mktemp("small_shards") / "release"
    writer = ReleaseWriter(root, cells_per_shard=2, config={"fixture": "small_shards"}, progress=False)
    for k, source in enumerate(("wtc11", "hpa", "cp")):
        writer.add_source(source, make_cells(source, 12, seed=k))
    writer.close()
    return root


@pytest.fixture
def short_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TIMEOUT_ENV, str(TIMEOUT_S))
    monkeypatch.setenv(DEADLINE_ENV, str(DEADLINE_S))


@pytest.fixture(params=["s3", "http"])
def server(request, small_shards: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[object, str]]:
    """A fresh server of each kind holding ``small_shards`` and its URL; continued and stopped afterwards."""
    if request.param == "s3":
        srv = S3Server().start()
        for k, v in srv.env().items():
            monkeypatch.setenv(k, v)
        url = srv.upload(small_shards, "chammi", "faults")
    else:
        srv = HTTPServer(small_shards).start()
        url = srv.url
    try:
        yield srv, url
    finally:
        srv.resume()
        srv.stop()


def test_the_deadline_is_documented_and_configurable(monkeypatch):
    assert RetryPolicy().deadline == 60.0 and RetryPolicy().timeout == 15.0
    monkeypatch.setenv(DEADLINE_ENV, "7.5")
    assert RetryPolicy().deadline == 7.5 and RetryPolicy(deadline=3).deadline == 3
    assert RetryPolicy(deadline=10).budget(5 << 20) == pytest.approx(15.0)  # 1 MiB/s for large reads
    monkeypatch.setenv(DEADLINE_ENV, "soon")
    with pytest.raises(ValueError, match=f"{DEADLINE_ENV}='soon' is not a number of seconds"):
        RetryPolicy()
    assert env_seconds("CHAMMI_NO_SUCH_VARIABLE", 2.0) == 2.0


def _fault(srv, kind: str) -> None:
    if kind == "stalled":
        srv.pause()
    else:
        srv.kill()


@pytest.mark.parametrize("kind", ["stalled", "killed"])
def test_load_fails_once_within_the_deadline(server, kind, short_deadline):
    srv, url = server

    def opened() -> ReleaseDataset:
        ds = chammi_data.load("all", root=url)
        for i in range(3):
            ds.read_array(i)
        return ds

    ds = _before_the_fault(opened)
    shard_of = ds.rows["shard"].tolist()
    todo = next(i for i in range(len(ds)) if shard_of[i] not in shard_of[:3])  # a shard not read yet
    _fault(srv, kind)
    t0 = time.monotonic()
    with pytest.raises(RemoteReadError) as err:
        ds.read_array(todo)
    elapsed = time.monotonic() - t0
    msg = str(err.value)
    assert msg.startswith(f"{url}/{shard_of[todo]}: read bytes "), msg
    assert "failed after" in msg and "\n" not in msg
    if kind == "stalled":
        assert "did not answer" in msg and f"deadline {DEADLINE_S:.0f} s" in msg, msg
    assert elapsed < BOUND_S, (elapsed, msg)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["stalled", "killed"])
def test_stream_with_two_workers_fails_once_within_the_deadline(server, kind, short_deadline, monkeypatch):
    srv, url = server
    # torch's DataLoader joins each worker for MP_STATUS_CHECK_INTERVAL (5 s) before it terminates it, after
    # ANY exception from an IterableDataset in a worker (a plain one raising RuntimeError: 10.3 s for 2
    # workers): torch's wait, not ours; shortened so that the test spends its time on what it checks
    monkeypatch.setattr(torch.utils.data._utils, "MP_STATUS_CHECK_INTERVAL", 1.0)
    before = set(descendants(os.getpid()))  # other tests' servers: not this test's business
    st = chammi_data.stream(root=url, split="all", seed=1, order="shards", readahead=1, buffer=2)

    def started() -> tuple[Any, list[str]]:
        it = iter(DataLoader(st, batch_size=2, num_workers=2, collate_fn=list, prefetch_factor=1))
        return it, [s["cell_id"] for _ in range(2) for s in next(it)]

    it, got = _before_the_fault(started)
    assert len(got) == 4
    _fault(srv, kind)
    t0 = time.monotonic()
    with pytest.raises(RemoteReadError) as err:
        for batch in it:
            got += [s["cell_id"] for s in batch]
    elapsed = time.monotonic() - t0
    assert len(got) < st.num_samples  # the fault stopped the epoch
    msg = str(err.value)
    assert f"{url}/shards/" in msg and ": read bytes " in msg and "failed after" in msg, msg
    assert elapsed < BOUND_S, (elapsed, msg)
    del it, err  # the traceback holds the DataLoader iterator, which holds its workers
    gc.collect()

    def workers() -> list[int]:
        return [p for p in descendants(os.getpid()) if p not in before]

    deadline = time.monotonic() + BOUND_S
    while workers() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not workers(), "worker processes left behind"


def test_a_store_retries_a_slow_answer_within_the_deadline(tiny_release):
    """A server slower than the per-request timeout is retried until the deadline, then named once."""
    with HTTPServer(tiny_release, delay_ms=1500) as srv:
        store = ReleaseStore(srv.url, retry=RetryPolicy(attempts=10, backoff=0.01, timeout=0.5, deadline=2.0))
        t0 = time.monotonic()
        with pytest.raises(
            RemoteReadError, match=r"release.json: read failed after \d+ attempts.*deadline 2 s"
        ):
            store.read_bytes("release.json")
        assert time.monotonic() - t0 < 2.0 + 2.5
        slow_but_fine = ReleaseStore(srv.url, retry=RetryPolicy(timeout=5, deadline=10))
        assert slow_but_fine.read_bytes("release.json") == (tiny_release / "release.json").read_bytes()


INTERRUPTED = """
import sys
from torch.utils.data import DataLoader
import chammi_data

url, kind = sys.argv[1], sys.argv[2]
try:
    if kind == "stream":
        data = chammi_data.stream(root=url, split="all", seed=1, order="shards", readahead=2, buffer=2)
    else:
        data = chammi_data.load("all", root=url)
    for k, batch in enumerate(DataLoader(data, batch_size=2, num_workers=2, collate_fn=list)):
        if k == 1:
            print("reading", flush=True)
except KeyboardInterrupt:  # what a training script does with Ctrl-C
    print("interrupted", file=sys.stderr)
    sys.exit(130)
"""


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["load", "stream"])
def test_ctrl_c_with_dataloader_workers_ends_cleanly(kind, small_shards, tmp_path):
    """SIGINT to the whole process group (a terminal's Ctrl-C) while two workers read from a stalled HTTP
    server: the script's own answer only, no worker traceback, no process left, at once."""
    with HTTPServer(small_shards, delay_ms=150) as srv:
        proc = subprocess.Popen(
            [sys.executable, "-c", INTERRUPTED, srv.url, kind],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "reading"
        srv.pause()  # the hardest moment: requests in flight to a server that answers nothing
        time.sleep(1.0)
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        while in_session(proc.pid) and time.monotonic() - t0 < 30:
            time.sleep(0.1)
        elapsed = time.monotonic() - t0
        srv.resume()
    assert not in_session(proc.pid), "worker processes left behind"
    assert proc.returncode == 130 and err.strip() == "interrupted", (proc.returncode, err[-3000:])
    # no waiting for the stalled requests' deadline (60 s by default) nor for torch's worker join timeouts
    assert elapsed < 4.0, elapsed
