"""Vectorised symmetry-aware RMSD vs a pair-by-pair rdMolAlign.GetBestRMS loop, same pairs.

20 Hutchison molecules (the first 20 by name with at least 5 references), all K references x
2K ETKDGv3 conformers each. The baseline loop gets heavy-atom copies prepared outside its timing
(favouring it); the vectorised path is timed from the raw molecules (hydrogen removal included).
Prints both times, the speed-up and the largest absolute difference.

``--geom-like-k 49`` replaces each molecule's references by 49 ETKDG conformers (GEOM-Drugs'
median K) to time the regime of the GEOM test set, 49 x 98 pairs per molecule.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_rmsd.py [--molecules 20]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from rdkit import Chem
from rdkit.Chem import rdMolAlign

from conformer.baselines import generate_rdkit
from conformer.evaluate.rmsd import rmsd_matrix
from conformer.sdf_io import read_conformer_groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--molecules", type=int, default=20, help="molecules (default 20)")
    parser.add_argument("--references", default="data/hutchison/hutchison_conformers.sdf.gz",
                        help="Hutchison SDF")
    parser.add_argument("--geom-like-k", type=int, default=0,
                        help="use K ETKDG conformers as references instead of Hutchison's")
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
        work.append((name, refs, gens))
    n_pairs = sum(len(r) * len(g) for _, r, g in work)

    heavy = [([Chem.RemoveHs(r) for r in refs], [Chem.RemoveHs(g) for g in gens])
             for _, refs, gens in work]
    start = time.perf_counter()
    loop = [np.array([[rdMolAlign.GetBestRMS(Chem.Mol(r), g) for g in hg] for r in hr])
            for hr, hg in heavy]
    loop_s = time.perf_counter() - start

    start = time.perf_counter()
    fast = [rmsd_matrix(refs, gens) for _, refs, gens in work]
    fast_s = time.perf_counter() - start

    diff = max(float(np.abs(a - b).max()) for a, b in zip(loop, fast, strict=True))
    print(f"{len(work)} molecules, {n_pairs} ref x gen pairs")
    print(f"GetBestRMS pair loop : {loop_s:8.3f} s")
    print(f"vectorised rmsd      : {fast_s:8.3f} s")
    print(f"speed-up             : {loop_s / fast_s:8.1f} x")
    print(f"max |difference|     : {diff:.2e} A")


if __name__ == "__main__":
    main()
