"""Fetch byte ranges of a release's shards ahead of their use, so that reading speed does not depend on
latency.

:class:`RangeReadahead` takes the list of byte ranges a stream worker will need, in order, and keeps up to
``depth`` of them in flight on background threads (one request each: a ``pread`` locally, one ranged GET
remotely). Memory is bounded by ``depth`` ranges plus the one being consumed. Errors (after the store's
retries) are raised in the consumer, at the range they belong to.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from chammi_data.store.storage import ReleaseStore


@dataclass(frozen=True)
class ByteRange:
    """``[start, end)`` of ``shard`` (relative to the release root)."""

    shard: str
    start: int
    end: int


class RangeReadahead:
    """Iterate ``(range, bytes)`` over ``ranges`` in order, with up to ``depth`` ranges fetched ahead."""

    def __init__(self, store: ReleaseStore, ranges: Sequence[ByteRange], depth: int = 2) -> None:
        self.store, self.ranges, self.depth = store, list(ranges), max(0, int(depth))

    def _fetch(self, r: ByteRange) -> bytes:
        data = self.store.read_range(r.shard, r.start, r.end - r.start)
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
        pool = ThreadPoolExecutor(max_workers=self.depth, thread_name_prefix="chammi-readahead")
        pending: deque[tuple[ByteRange, Future[bytes]]] = deque()
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
            pool.shutdown(wait=False, cancel_futures=True)
