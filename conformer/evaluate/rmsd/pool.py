"""RMSD matrices of many molecules in forked worker processes (:class:`ForkedRMSDPool`)."""

from __future__ import annotations

import multiprocessing

import numpy as np
from rdkit import Chem

from conformer.evaluate.rmsd.kernel import matrices_in_process
from conformer.evaluate.rmsd.symmetry import DEFAULT_MAX_MATCHES
from conformer.parallel import WorkerPool

_MIN_CHUNK_PAIRS = 1_000

# Molecules of the running parallel evaluation, inherited by forked workers (never pickled).
_FORKED_PROBLEMS: list[tuple[list[Chem.Mol], list[Chem.Mol]]] | None = None


def _matrices_of_chunk(task: tuple) -> tuple[int, list[np.ndarray]]:
    start, stop, max_matches, symmetrize, on_mismatch = task
    problems = _FORKED_PROBLEMS
    assert problems is not None, "worker started without the parent's molecules"
    return start, matrices_in_process(problems[start:stop], max_matches, symmetrize,
                                       on_mismatch)


class ForkedRMSDPool:
    """Worker processes that compute :func:`rmsd_matrix` for many molecules.

    The workers are forked after ``problems`` (a list of ``(refs, gens)``, one per molecule) is
    in memory, so they read the molecules copy-on-write: nothing is serialised on the way in,
    only the (K, G) matrices come back. Work goes out in chunks of consecutive molecules, at
    most ``chunk_pairs`` reference x generated pairs each (bounding each worker's memory).
    Needs the ``fork`` start method (Linux); use as a context manager, one pool at a time.
    With ``workers=1`` the chunks run in this process.
    """

    def __init__(self, problems: list[tuple[list[Chem.Mol], list[Chem.Mol]]], workers: int,
                 chunk_pairs: int = 20_000):
        global _FORKED_PROBLEMS
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if "fork" not in multiprocessing.get_all_start_methods():
            raise RuntimeError("ForkedRMSDPool needs the fork start method (not available here)")
        if _FORKED_PROBLEMS is not None:
            raise RuntimeError("another ForkedRMSDPool is open in this process")
        self.problems = problems
        _FORKED_PROBLEMS = problems
        self.chunks = self._chunk(problems, chunk_pairs, workers)
        # forked now, after _FORKED_PROBLEMS is set; kept warm across map() calls
        self._pool = WorkerPool(workers, context="fork")

    @staticmethod
    def _chunk(problems, chunk_pairs: int, workers: int) -> list[tuple[int, int]]:
        sizes = [max(1, sum(m.GetNumConformers() for m in refs)
                     * sum(m.GetNumConformers() for m in gens)) for refs, gens in problems]
        # ~4 chunks per worker so that uneven molecules still share the work out, but none
        # under _MIN_CHUNK_PAIRS pairs, where handing a chunk over costs more than imbalance
        limit = max(1, min(chunk_pairs, max(_MIN_CHUNK_PAIRS, sum(sizes) // (4 * workers) + 1)))
        chunks, start, total = [], 0, 0
        for i, size in enumerate(sizes):
            total += size
            if total >= limit:
                chunks.append((start, i + 1))
                start, total = i + 1, 0
        if start < len(problems):
            chunks.append((start, len(problems)))
        return chunks

    def map(self, max_matches: int = DEFAULT_MAX_MATCHES, symmetrize: bool = True,
            on_mismatch: str = "raise", progress=None) -> list[np.ndarray]:
        """All RMSD matrices, in the order of ``problems``; ``progress(n_molecules_done)`` is
        called as chunks finish (e.g. a tqdm ``update``)."""
        out: list[np.ndarray | None] = [None] * len(self.problems)
        tasks = [(a, b, max_matches, symmetrize, on_mismatch) for a, b in self.chunks]
        for start, matrices in self._pool.map(_matrices_of_chunk, tasks, ordered=False):
            out[start:start + len(matrices)] = matrices
            if progress is not None:
                progress(len(matrices))
        return out  # type: ignore[return-value]

    def close(self) -> None:
        global _FORKED_PROBLEMS
        self._pool.close()
        _FORKED_PROBLEMS = None

    def __enter__(self) -> ForkedRMSDPool:
        return self

    def __exit__(self, *exc) -> None:
        global _FORKED_PROBLEMS
        if exc[0] is None:
            self.close()
            return
        self._pool.terminate()
        _FORKED_PROBLEMS = None


def rmsd_matrices(problems: list[tuple[list[Chem.Mol], list[Chem.Mol]]], workers: int = 1,
                  max_matches: int = DEFAULT_MAX_MATCHES, symmetrize: bool = True,
                  on_mismatch: str = "raise", progress=None) -> list[np.ndarray]:
    """:func:`rmsd_matrix` for many molecules: ``problems`` is a list of ``(refs, gens)``.

    ``workers > 1`` forks that many processes (:class:`ForkedRMSDPool`; Linux) and includes
    their start-up; with one worker, or without fork, it runs in this process.
    """
    if workers > 1 and len(problems) > 1 and "fork" in multiprocessing.get_all_start_methods():
        with ForkedRMSDPool(problems, workers) as pool:
            return pool.map(max_matches, symmetrize, on_mismatch, progress)
    return matrices_in_process(problems, max_matches, symmetrize, on_mismatch, progress)
