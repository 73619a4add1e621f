"""Fetch byte ranges of a release's shards ahead of their use, so that reading speed does not depend on
latency.

:class:`RangeReadahead` takes the list of byte ranges a stream worker will need, in order, and keeps up to
``depth`` of them in flight on background threads (one request each: a ``pread`` locally, one ranged GET
remotely). Memory is bounded by ``depth`` ranges plus the one being consumed. Errors (after the store's
retries, within its deadline) are raised in the consumer, at the range they belong to.

The threads are daemon threads: a DataLoader worker that stops (an error, Ctrl-C, the end of an epoch) exits
at once instead of waiting for a request in flight to a stalled server to reach its deadline (a
``ThreadPoolExecutor``'s threads are joined when the interpreter exits).
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from chammi_data.store.storage import ReleaseStore


@dataclass(frozen=True)
class ByteRange:
    """``[start, end)`` of ``shard`` (relative to the release root)."""

    shard: str
    start: int
    end: int


class _DaemonPool:
    """``n`` daemon threads running submitted calls in order; :meth:`shutdown` cancels what has not
    started and lets running calls finish (or the process exit) without waiting for them."""

    def __init__(self, n: int) -> None:
        self._todo: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]] | None] = (
            queue.SimpleQueue()
        )
        self._n = n
        for k in range(n):
            threading.Thread(target=self._run, name=f"chammi-readahead-{k}", daemon=True).start()

    def _run(self) -> None:
        while (item := self._todo.get()) is not None:
            fut, fn, args = item
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(*args))
            except BaseException as exc:  # handed to the consumer, raised there
                fut.set_exception(exc)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        self._todo.put((fut, fn, args))
        return fut

    def shutdown(self) -> None:
        for _ in range(self._n):
            self._todo.put(None)


class RangeReadahead:
    """Iterate ``(range, bytes)`` over ``ranges`` in order, with up to ``depth`` ranges fetched ahead."""

    def __init__(self, store: ReleaseStore, ranges: Sequence[ByteRange], depth: int = 2) -> None:
        self.store, self.ranges, self.depth = store, list(ranges), max(0, int(depth))

    def _fetch(self, r: ByteRange) -> bytes | memoryview:
        data = self.store.read_range_view(r.shard, r.start, r.end - r.start)
        if len(data) != r.end - r.start:
            from chammi_data.format.shards import ShardFormatError

            raise ShardFormatError(
                f"{self.store.path(r.shard)}: truncated: read {len(data)} of {r.end - r.start} "
                f"bytes at offset {r.start}"
            )
        return data

    def __iter__(self) -> Iterator[tuple[ByteRange, bytes]]:
        if self.depth == 0:
            for r in self.ranges:
                yield r, self._fetch(r)
            return
        pool = _DaemonPool(self.depth)
        pending: deque[tuple[ByteRange, Future[bytes | memoryview]]] = deque()
        todo = iter(self.ranges)
        try:
            for r in todo:
                pending.append((r, pool.submit(self._fetch, r)))
                if len(pending) > self.depth:
                    break
            while pending:
                r, fut = pending.popleft()
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append((nxt, pool.submit(self._fetch, nxt)))
                yield r, fut.result()
        finally:
            for _, fut in pending:
                fut.cancel()
            pool.shutdown()
