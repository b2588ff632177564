"""parallel_map / WorkerPool: same results serial and parallel, clean shutdown on every exit."""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os

import pytest

from conformer.parallel import WorkerPool, parallel_map

needs_fork = pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(),
                                reason="fork start method not available")
_STATE = {"offset": 0}


def _set_offset(offset: int) -> None:
    _STATE["offset"] = offset


def _shifted_square(x: int) -> tuple[int, int]:
    return x * x + _STATE["offset"], os.getpid()


def _fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError(f"item {x} is bad")
    return x


def _no_children_left() -> bool:
    return not multiprocessing.active_children()


@pytest.fixture(autouse=True)
def _restore_state():
    yield
    _STATE["offset"] = 0


def test_serial_runs_here_in_order_and_runs_the_initializer_once():
    results = list(parallel_map(_shifted_square, range(5), workers=1, initializer=_set_offset,
                                initargs=(10,)))
    assert [value for value, _ in results] == [10, 11, 14, 19, 26]
    assert {pid for _, pid in results} == {os.getpid()}


@needs_fork
@pytest.mark.parametrize("ordered", [True, False])
def test_workers_give_the_serial_results_with_their_initializer(ordered):
    results = list(parallel_map(_shifted_square, range(20), workers=2, context="fork",
                                ordered=ordered, chunksize=3, initializer=_set_offset,
                                initargs=(10,)))
    values = [value for value, _ in results]
    expected = [x * x + 10 for x in range(20)]
    assert (values if ordered else sorted(values)) == expected
    assert os.getpid() not in {pid for _, pid in results}
    assert _STATE["offset"] == 0  # the initializer ran in the workers, not here
    assert _no_children_left()


def test_spawned_workers_run_module_level_functions():
    assert list(parallel_map(math.sqrt, [1.0, 4.0, 9.0], workers=2)) == [1.0, 2.0, 3.0]
    assert _no_children_left()


@needs_fork
@pytest.mark.parametrize("workers", [1, 2])
def test_a_worker_error_reaches_the_caller_and_stops_the_workers(workers):
    with pytest.raises(ValueError, match="item 3 is bad"):
        list(parallel_map(_fail_on_three, range(10), workers=workers, context="fork"))
    assert _no_children_left()


@needs_fork
@pytest.mark.parametrize("stop", [KeyboardInterrupt, RuntimeError])
def test_leaving_the_loop_early_terminates_the_workers(stop):
    with pytest.raises(stop):
        with contextlib.closing(parallel_map(_shifted_square, range(1000), workers=2,
                                             context="fork")) as results:
            for _ in results:
                raise stop()
    assert _no_children_left()


@needs_fork
def test_a_warm_pool_serves_several_passes_and_closes():
    with WorkerPool(2, context="fork", initializer=_set_offset, initargs=(1,)) as pool:
        first = [value for value, _ in pool.map(_shifted_square, range(4))]
        pids = {pid for _, pid in pool.map(_shifted_square, range(40), ordered=False)}
        assert first == [1, 2, 5, 10]
        assert len(multiprocessing.active_children()) == 2  # the same workers, still up
        assert os.getpid() not in pids
    assert _no_children_left()


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="context 'threads'"):
        WorkerPool(2, context="threads")
    with pytest.raises(ValueError, match="chunksize"):
        list(parallel_map(abs, [1], workers=1, chunksize=0))
