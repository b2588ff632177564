"""One way to run a function over many items in worker processes.

:func:`parallel_map` is the helper for a single pass (a pool started, used, shut down);
:class:`WorkerPool` keeps the workers warm across several passes (e.g. the forked RMSD pool,
whose workers read the parent's molecules copy-on-write). Both run in this process, with no
pool at all, when ``workers <= 1``, so a serial run needs no pickling and shows plain
tracebacks.

Shutdown: when every result has been read the workers are closed and joined; when anything
stops the loop early (an exception raised by a worker, re-raised here; an exception or
``break`` in the caller's loop; Ctrl-C) the workers are terminated and joined, so no process
is left behind. A caller that may leave its loop early should close the iterator at once with
``contextlib.closing(parallel_map(...))`` (a generator abandoned in a traceback is only closed
when it is garbage collected).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from typing import Any

CONTEXTS = ("spawn", "fork", "forkserver")


class WorkerPool:
    """``workers`` processes started with ``context`` that map functions over items.

    ``initializer(*initargs)`` runs once in each worker when it starts (once in this process
    when ``workers <= 1``, so ``fn`` sees the same state either way). Functions, items and
    results cross process boundaries by pickling (except what a ``fork`` worker inherits), so
    ``fn`` must be a module-level function (or a ``functools.partial`` of one).
    Use as a context manager; :meth:`close` waits for the workers, :meth:`terminate` stops them.
    """

    def __init__(self, workers: int, context: str = "spawn",
                 initializer: Callable[..., Any] | None = None, initargs: tuple = ()):
        if context not in CONTEXTS:
            raise ValueError(f"context {context!r}: choose one of {', '.join(CONTEXTS)}")
        if workers > 1 and context not in multiprocessing.get_all_start_methods():
            raise RuntimeError(f"the {context} start method is not available on this platform")
        self.workers = max(1, int(workers))
        self.context = context
        self._pool = None
        if self.workers > 1:
            self._pool = multiprocessing.get_context(context).Pool(
                self.workers, initializer=initializer, initargs=initargs)
        elif initializer is not None:
            initializer(*initargs)

    @property
    def serial(self) -> bool:
        """True when work runs in this process (``workers <= 1``)."""
        return self._pool is None

    def map(self, fn: Callable[[Any], Any], items: Iterable, ordered: bool = True,
            chunksize: int = 1) -> Iterator:
        """Yield ``fn(item)`` for every item: in the items' order when ``ordered``, else as
        workers finish them. ``chunksize`` items go to a worker at a time. A worker's exception
        is re-raised here and terminates the pool (it is not reusable afterwards)."""
        if chunksize < 1:
            raise ValueError(f"chunksize must be >= 1, got {chunksize}")
        if self._pool is None:
            yield from map(fn, items)
            return
        imap = self._pool.imap if ordered else self._pool.imap_unordered
        try:
            yield from imap(fn, items, chunksize=chunksize)
        except BaseException:  # worker error, caller's break/exception (GeneratorExit), Ctrl-C
            self.terminate()
            raise

    def close(self) -> None:
        """Let the workers finish and wait for them."""
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None

    def terminate(self) -> None:
        """Stop the workers now (unfinished work is dropped) and wait for them."""
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.close()
        else:
            self.terminate()


def parallel_map(fn: Callable[[Any], Any], items: Iterable, workers: int,
                 context: str = "spawn", ordered: bool = True, chunksize: int = 1,
                 initializer: Callable[..., Any] | None = None,
                 initargs: tuple = ()) -> Iterator:
    """Yield ``fn(item)`` for every item, computed by ``workers`` processes (``context``:
    ``spawn``, ``fork`` or ``forkserver``); serial in this process when ``workers <= 1``.

    ``ordered``: results in the items' order (else as they finish; pair them with their item
    by returning a key from ``fn``). ``chunksize``: items handed to a worker at a time (raise
    it for many cheap items). ``initializer(*initargs)``: run once per worker at start (once
    here when serial). The pool starts at the first ``next()`` and is shut down when the
    iterator is exhausted or closed, or an exception passes through it (see the module
    docstring).
    """
    with WorkerPool(workers, context, initializer, initargs) as pool:
        yield from pool.map(fn, items, ordered=ordered, chunksize=chunksize)


__all__ = ["CONTEXTS", "WorkerPool", "parallel_map"]
