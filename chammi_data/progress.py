"""Progress reporting that suits both a terminal and a log file.

:func:`progress` gives a tqdm bar when stderr is a terminal and ``$TQDM_DISABLE`` is not set. Otherwise
(CI logs, ``nohup``, ``2> file``, ``TQDM_DISABLE=1``) it prints one line when a stage starts and one when it
ends, never a carriage return::

    export HPA: 176 cells
    export HPA: done 176 cells in 2.4 s

``disable=True`` prints nothing at all (``--quiet``). The same object works as an iterable wrapper and as a
bar updated by hand (``update``, ``set_postfix``, ``close``, ``with``), like tqdm's.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any, Generic, TypeVar

T = TypeVar("T")

#: Environment variable that turns bars into start/end lines (tqdm's own name for "no bars").
DISABLE_ENV = "TQDM_DISABLE"
_FALSE_TEXT = {"", "0", "false", "no", "off"}
_NO_PLURAL = {"", "it", "B"}


def bars_wanted(stream: IO[str] | None = None) -> bool:
    """True when an animated bar suits ``stream`` (default stderr): a terminal, and ``$TQDM_DISABLE``
    unset."""
    if os.environ.get(DISABLE_ENV, "").strip().lower() not in _FALSE_TEXT:
        return False
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def _amount(n: float, unit: str) -> str:
    count = f"{int(n)}" if float(n).is_integer() else f"{n:g}"
    return f"{count} {unit}" if unit else count


class Progress(Generic[T]):
    """A progress bar (tqdm) or start/end lines; see the module docstring (``progress`` is this class)."""

    def __init__(
        self,
        iterable: Iterable[T] | None = None,
        *,
        desc: str = "",
        total: float | None = None,
        unit: str = "it",
        disable: bool = False,
        leave: bool = True,
        initial: float = 0,
        stream: IO[str] | None = None,
    ):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable = iterable
        self.desc, self.total, self.unit = desc, total, unit
        self.n: float = initial
        self.disable = disable
        self._stream = stream if stream is not None else sys.stderr
        self._postfix: dict[str, Any] = {}
        self._closed = False
        self._start = time.perf_counter()
        self._bar: Any = None
        if disable:
            return
        if bars_wanted(self._stream):
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total, desc=desc, unit=unit, leave=leave, initial=initial, file=self._stream
            )
        else:
            size = "" if total is None else _amount(total, self._units(total))
            resumed = f" ({_amount(initial, '')} already done)" if initial else ""
            self._line(f"{desc}: {size or 'started'}{resumed}")

    def _units(self, n: float) -> str:
        plural = n != 1 and self.unit not in _NO_PLURAL and not self.unit.endswith("s")
        return self.unit + ("s" if plural else "")

    def _line(self, text: str) -> None:
        print(text, file=self._stream, flush=True)

    def __iter__(self) -> Iterator[T]:
        if self.iterable is None:
            raise TypeError("this progress bar wraps no iterable; call update() instead")
        ok = False
        try:
            for item in self.iterable:
                yield item
                self.update(1)
            ok = True
        finally:
            self.close(ok)

    def __len__(self) -> int:
        if self.total is None:
            raise TypeError("progress over an iterable of unknown length")
        return int(self.total)

    def update(self, n: float = 1) -> None:
        """Advance by ``n`` units."""
        self.n += n
        if self._bar is not None:
            self._bar.update(n)

    def set_postfix(self, **values: Any) -> None:
        """Values shown beside the bar (terminal) or at the end of the closing line (log)."""
        self._postfix = dict(values)
        if self._bar is not None:
            self._bar.set_postfix(**values)

    def close(self, ok: bool = True) -> None:
        """End the stage: close the bar, or print the closing line (``ok=False``: it stopped early)."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
            return
        if self.disable:
            return
        took = f"{time.perf_counter() - self._start:.1f} s"
        extra = "".join(f", {k}={v}" for k, v in self._postfix.items())
        done = _amount(self.n, self._units(self.n))
        if ok and (self.total is None or self.n >= self.total):
            self._line(f"{self.desc}: done {done} in {took}{extra}")
        else:
            of = "" if self.total is None else f" of {_amount(self.total, '')}"
            self._line(f"{self.desc}: stopped after {done}{of} in {took}{extra}")

    def __enter__(self) -> Progress[T]:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.close(ok=exc_type is None)


#: Wrap an iterable (or, without one, make a bar to ``update()`` by hand) with progress reporting:
#: ``progress(iterable, desc=..., total=..., unit=..., disable=..., leave=..., initial=...)``. ``total``
#: defaults to ``len(iterable)`` when it has one; ``unit`` names what is counted (plural: +"s"); ``initial``:
#: units already done (a resumed run). A tqdm bar on a terminal; otherwise a start line and an end line on
#: stderr; nothing with ``disable``.
progress = Progress
