"""Progress reporting that suits where stderr goes.

A tqdm bar redraws itself with carriage returns: fine on a terminal, garbage in a log file or a
pipe (every redraw becomes a fragment of a line). :func:`progress` draws the bar only when
stderr is a terminal; otherwise it prints a plain line at most every ``interval_s`` seconds and
one at the end, so logs stay readable and short.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TextIO


class Progress:
    """A counter shown as a tqdm bar (terminal), occasional plain lines (not a terminal), or
    nothing (``enabled=False``). Use :meth:`update` or iterate; :meth:`close` when done (also
    as a context manager)."""

    def __init__(self, iterable: Iterable | None = None, total: int | None = None,
                 desc: str = "", enabled: bool = True, unit: str = "it",
                 stream: TextIO | None = None, interval_s: float = 30.0):
        self.iterable = iterable
        self.total = total if total is not None else _length(iterable)
        self.desc, self.unit, self.interval_s = desc, unit, interval_s
        self.stream = stream if stream is not None else sys.stderr
        self.count = 0
        self._bar = None
        self._plain = False
        self._closed = False
        if enabled and _is_terminal(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, desc=desc, unit=unit, file=self.stream)
        elif enabled:
            self._plain = True
            self._start = self._last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.count += n
        if self._bar is not None:
            self._bar.update(n)
        elif self._plain and time.monotonic() - self._last >= self.interval_s:
            self._last = time.monotonic()
            self._line()

    def _line(self, suffix: str = "") -> None:
        of = f"/{self.total}" if self.total is not None else ""
        percent = f" ({100 * self.count / self.total:.0f}%)" if self.total else ""
        elapsed = time.monotonic() - self._start
        print(f"{self.desc}: {self.count}{of} {self.unit}{percent}, {elapsed:.0f} s{suffix}",
              file=self.stream, flush=True)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self._plain and self.count:
            self._line(", done" if self.total is None or self.count >= self.total else "")

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("Progress was created without an iterable")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(iterable: Iterable | None = None, total: int | None = None, desc: str = "",
             enabled: bool = True, unit: str = "it", stream: TextIO | None = None,
             interval_s: float = 30.0) -> Progress:
    """A :class:`Progress` over ``iterable`` (or a bare counter): a tqdm bar when ``stream``
    (default stderr) is a terminal, else a plain line at most every ``interval_s`` seconds and
    a last one at the end; nothing when ``enabled`` is False."""
    return Progress(iterable, total, desc, enabled, unit, stream, interval_s)


def _length(iterable) -> int | None:
    try:
        return len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
