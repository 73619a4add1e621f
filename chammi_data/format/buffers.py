"""Decode buffers that are handed back when the last array using them is gone.

Why: a decoded HPA member is 1 MB. A fresh ``np.empty`` of that size is new memory from the kernel whenever
glibc's heuristics (the dynamic mmap threshold, heap trimming) hand the previous block back to the system:
its 256 pages then fault in one by one as the decoder writes them, 0.3 ms per member here, +26% on a
1.2 ms decode. Whether that happens depends on the process's allocation history, which is why reruns of the
codec benchmark gave 1.01-1.06x and 1.24-1.42x a bare decode into a reused buffer
(``benchmarks/results/loader.md``, "Codec ceiling").

:func:`pooled_empty` returns a uint8 array whose memory comes from a small pool: the array's base is a lease
object, and when the last view of the array dies (the sample was stacked into a batch, or dropped) the lease
gives the buffer back for the next decode of the same size. A caller that keeps the array keeps the buffer;
nothing is ever reused while an array (or a tensor made with ``torch.from_numpy``) still refers to it. The
pool keeps at most :data:`POOL_BYTES` of idle buffers: when it is full, idle buffers of other sizes are freed
first (a size no longer decoded must not starve the current ones), then the returning one.
"""

from __future__ import annotations

import numpy as np

#: Idle bytes the pool keeps for reuse (per process).
POOL_BYTES = 64 << 20
#: Smaller buffers come from malloc's own free lists (no page faults worth saving).
MIN_POOLED = 64 << 10

_free: dict[int, list[np.ndarray]] = {}
_idle = [0]  # idle bytes in the pool (a list: updated without a global statement)


class _Lease:
    """Owns one pooled buffer while arrays view it; its ``__del__`` returns the buffer to the pool."""

    __slots__ = ("__array_interface__", "_buf")

    def __init__(self, buf: np.ndarray):
        self._buf = buf
        self.__array_interface__ = buf.__array_interface__

    def __del__(self) -> None:
        buf, nbytes = self._buf, self._buf.nbytes
        while _idle[0] + nbytes > POOL_BYTES:  # full: idle buffers of other sizes make room (sizes change)
            other = next((k for k, v in _free.items() if v and k != nbytes), None)
            if other is None:
                return  # only buffers of this size are idle: free this one as usual
            _free[other].pop()
            _idle[0] -= other
        _free.setdefault(nbytes, []).append(buf)
        _idle[0] += nbytes


def pooled_empty(nbytes: int) -> np.ndarray:
    """A writable uint8 array of ``nbytes`` (contents undefined), from the pool when one of that size is
    idle (already faulted in), else new; see the module docstring."""
    if nbytes < MIN_POOLED:
        return np.empty(nbytes, np.uint8)
    try:
        buf = _free[nbytes].pop()
        _idle[0] -= nbytes
    except (KeyError, IndexError):
        buf = np.empty(nbytes, np.uint8)
    return np.asarray(_Lease(buf))


def idle_bytes() -> int:
    """Bytes of idle buffers in the pool (for tests and benchmarks)."""
    return _idle[0]
