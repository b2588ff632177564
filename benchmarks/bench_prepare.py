"""Preprocessing throughput of ``conformer prepare``: molecules/second, 1 worker vs 2 workers.

Runs on the ``tests/fixtures/geom_mini`` molecules, copied ``--repeat`` times under distinct
file names so that a run lasts long enough to time (14 molecules alone are done before a
worker pool has started). Both runs happen in this process on the same input, each into a fresh
cache folder; their records are compared file by file, then the ratio is printed.

Usage: PYTHONPATH=. python benchmarks/bench_prepare.py [--repeat 100] [--workers 2]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from conformer.data import geom
from conformer.data.build import write_split
from conformer.data.prepare import prepare

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "geom_mini"


def replicated_fixture(root: Path, repeat: int) -> Path:
    folder = root / "geom"
    (folder / "drugs").mkdir(parents=True)
    for copy in range(repeat):
        for path in geom.sorted_pickle_paths(FIXTURE, "drugs"):
            shutil.copy(path, folder / "drugs" / f"{copy:03d}-{path.name}")
    write_split(folder, "drugs", (0.8, 0.1, 0.1), seed=1)
    return folder


def timed_prepare(folder: Path, cache: Path, workers: int) -> tuple[float, int]:
    start = time.perf_counter()
    report = prepare(folder, folder / "split.npy", cache, workers=workers, progress=False)
    return time.perf_counter() - start, report.processed_now


def same_records(a: Path, b: Path) -> bool:
    dir_a, dir_b = next(a.glob("drugs-*")), next(b.glob("drugs-*"))
    files = sorted(p.relative_to(dir_a) for p in dir_a.glob("*/*.npz"))
    if files != sorted(p.relative_to(dir_b) for p in dir_b.glob("*/*.npz")):
        return False
    for name in files:
        with np.load(dir_a / name) as x, np.load(dir_b / name) as y:
            if any(not np.array_equal(x[k], y[k]) for k in x.files):
                return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=100, help="copies of the fixture")
    parser.add_argument("--workers", type=int, default=2, help="workers of the second run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = replicated_fixture(root, args.repeat)
        base_s, n = timed_prepare(folder, root / "cache1", 1)
        multi_s, n_multi = timed_prepare(folder, root / "cacheN", args.workers)
        assert n == n_multi
        identical = same_records(root / "cache1", root / "cacheN")
    print(f"molecules: {n} (fixture x{args.repeat})")
    print(f"1 worker : {n / base_s:8.1f} mol/s ({base_s:.2f} s)")
    print(f"{args.workers} workers: {n / multi_s:8.1f} mol/s ({multi_s:.2f} s)")
    print(f"speed-up {args.workers} workers / 1 worker: {base_s / multi_s:.2f}x; "
          f"records identical: {identical}")


if __name__ == "__main__":
    main()
