"""Vectorised symmetry-aware RMSD vs a pair-by-pair rdMolAlign.GetBestRMS loop, same pairs.

20 Hutchison molecules (the first 20 by name with at least 5 references), all K references x
2K ETKDGv3 conformers each. The vectorised path is always timed from the raw molecules
(hydrogens included, hydrogen removal and graph grouping timed). Two baselines, the same
GetBestRMS pair loop over the same pairs:

- loop A, heavy-atom copies prepared *outside* its timing (favours the loop: it is handed work
  that the vectorised path has to do itself);
- loop B, from the same raw molecules: ``RemoveHs`` once per conformer, then the pairs (what a
  pair-by-pair evaluation of these inputs costs).

Four figures for the vectorised path, each against both loops:

- 1 process, per molecule: ``rmsd_matrix`` molecule by molecule, as ``conformer evaluate
  --workers 1`` calls it;
- 1 process, batched: ``rmsd_matrices(..., workers=1)`` (small molecules' covariances share
  closed-form passes);
- N workers, cold: ``rmsd_matrices(..., workers=N)``, forking the workers inside the timing;
- N workers, warm: a :class:`ForkedRMSDPool` started (and its start-up timed) beforehand, as in
  a long evaluation where start-up is paid once; only the work itself is timed.

Every timing is the best of ``--repeats`` rounds (loop and fast paths interleaved, so machine
load hits both alike). Prints pairs, the largest |difference| to the loop, times and ratios, and
which figures reach the 10x target. Numbers need an otherwise idle machine to be meaningful.

``--geom-like-k 49`` replaces each molecule's references by 49 ETKDG conformers (GEOM-Drugs'
median K) to time the regime of the GEOM test set, 49 x 98 pairs per molecule.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_rmsd.py [--molecules 20] [--geom-like-k 49]
"""

from __future__ import annotations

import os

# one BLAS thread: the loop is single-threaded, and workers are counted separately
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from rdkit import Chem  # noqa: E402
from rdkit.Chem import rdMolAlign  # noqa: E402

from conformer.baselines import generate_rdkit  # noqa: E402
from conformer.evaluate.rmsd import ForkedRMSDPool, rmsd_matrices, rmsd_matrix  # noqa: E402
from conformer.sdf_io import read_conformer_groups  # noqa: E402

TARGET = 10.0


def _timed(function):
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--molecules", type=int, default=20, help="molecules (default 20)")
    parser.add_argument("--references", default="data/hutchison/hutchison_conformers.sdf.gz",
                        help="Hutchison SDF")
    parser.add_argument("--geom-like-k", type=int, default=0,
                        help="use K ETKDG conformers as references instead of Hutchison's")
    parser.add_argument("--workers", type=int, default=2,
                        help="worker processes for the parallel figures (default 2; 1 skips them)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="rounds; each figure is the best round (default 3)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    groups = read_conformer_groups(args.references, key="molecule")
    names = [n for n in sorted(groups) if len(groups[n]) >= 5][: args.molecules]
    work = []
    for i, name in enumerate(names):
        refs = groups[name]
        smiles = Chem.MolFromSmiles(Chem.MolToSmiles(refs[0]))
        if args.geom_like_k:
            ref_mol = generate_rdkit(smiles, args.geom_like_k, seed=5000 + i)
            refs = [Chem.Mol(ref_mol, confId=c.GetId()) for c in ref_mol.GetConformers()]
        gen = generate_rdkit(smiles, 2 * len(refs), seed=100 + i)
        gens = [Chem.Mol(gen, confId=c.GetId()) for c in gen.GetConformers()]
        work.append((refs, gens))
    n_pairs = sum(len(r) * len(g) for r, g in work)
    heavy = [([Chem.RemoveHs(r) for r in refs], [Chem.RemoveHs(g) for g in gens])
             for refs, gens in work]

    def loop_with_hydrogen_removal():  # what a real pair loop also pays, once per conformer
        out = []
        for refs, gens in work:
            hr, hg = [Chem.RemoveHs(r) for r in refs], [Chem.RemoveHs(g) for g in gens]
            out.append(np.array([[rdMolAlign.GetBestRMS(r, g) for g in hg] for r in hr]))
        return out

    def loop():
        return [np.array([[rdMolAlign.GetBestRMS(Chem.Mol(r), g) for g in hg] for r in hr])
                for hr, hg in heavy]

    def single():
        return [rmsd_matrix(refs, gens) for refs, gens in work]

    parallel = args.workers > 1
    times: dict[str, list[float]] = {"loop": [], "loop_h": [], "single": [], "batched": [],
                                     "cold": [], "warm": []}
    results: dict[str, list[np.ndarray]] = {}

    def record(label, function):
        seconds, results[label] = _timed(function)
        times[label].append(seconds)

    startup_s = []
    for _ in range(args.repeats):
        record("loop", loop)
        record("loop_h", loop_with_hydrogen_removal)
        record("single", single)
        record("batched", lambda: rmsd_matrices(work, 1))
        if parallel:
            record("cold", lambda: rmsd_matrices(work, args.workers))
            seconds, pool = _timed(lambda: ForkedRMSDPool(work, args.workers))
            startup_s.append(seconds)
            with pool:
                pool.map()  # the workers' first pass touches their copy-on-write pages
                record("warm", pool.map)

    loop_s, loop_h_s = min(times["loop"]), min(times["loop_h"])
    print(f"{len(work)} molecules, {n_pairs} ref x gen pairs, best of {args.repeats} rounds")
    print(f"loop A, GetBestRMS pairs, heavy copies given : {loop_s:8.3f} s")
    print(f"loop B, GetBestRMS pairs from the same input : {loop_h_s:8.3f} s")
    rows = [("single", "1 process, per molecule"), ("batched", "1 process, batched")]
    if parallel:
        rows += [("cold", f"{args.workers} workers, cold"), ("warm", f"{args.workers} workers, warm")]
    meets = {"A": [], "B": []}
    print(f"{'vectorised':26s} {'time s':>8s} {'vs loop A':>10s} {'vs loop B':>10s}  max |diff| A")
    for label, text in rows:
        seconds = min(times[label])
        diff = max(float(np.abs(a - b).max())
                   for a, b in zip(results["loop"], results[label], strict=True))
        ratio_a, ratio_b = loop_s / seconds, loop_h_s / seconds
        for loop_name, ratio in (("A", ratio_a), ("B", ratio_b)):
            if ratio >= TARGET:
                meets[loop_name].append(text)
        print(f"{text:26s} {seconds:8.3f} {ratio_a:9.1f}x {ratio_b:9.1f}x  {diff:.2e}")
    if parallel:
        print(f"worker start-up (paid once per pool): {min(startup_s):.3f} s")
    for loop_name in ("A", "B"):
        print(f"reaching {TARGET:.0f}x against loop {loop_name}: "
              + (", ".join(meets[loop_name]) if meets[loop_name] else "none"))


if __name__ == "__main__":
    main()
