"""Recompute an evaluation's COV/MAT with a plain pair-by-pair rdMolAlign.GetBestRMS loop.

Independent check of ``conformer evaluate``: reads the generated SDF and the references, matches
them by name, computes every RMSD with ``GetBestRMS(RemoveHs(ref), RemoveHs(gen))`` and prints
the largest differences of the RMSD matrices and of COV/MAT against ``DIR/results.json``.

    PYTHONPATH=. .venv/bin/python scripts/check_pairwise_getbestrms.py \\
        --generated runs/hutchison_etkdg/generated.sdf \\
        --references data/hutchison/hutchison_conformers.sdf.gz --eval runs/hutchison_etkdg/eval
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from rdkit import Chem
from rdkit.Chem import rdMolAlign
from tqdm import tqdm

from conformer.evaluate.metrics import aggregate, molecule_scores
from conformer.sdf_io import read_conformer_groups


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generated", type=Path, required=True, help="generated SDF")
    parser.add_argument("--references", type=Path, required=True, help="reference SDF")
    parser.add_argument("--ref-key", default="molecule", help="reference group property")
    parser.add_argument("--eval", type=Path, required=True, help="evaluate output folder")
    args = parser.parse_args()
    document = json.loads((args.eval / "results.json").read_text())
    threshold = document["metrics"]["threshold"]
    stored = np.load(args.eval / "rmsd.npz")
    stored_by_name = {str(n): stored[f"m{i}"] for i, n in enumerate(stored["names"])}
    refs = read_conformer_groups(args.references, key=args.ref_key)
    gens = read_conformer_groups(args.generated, key="name")
    scores, worst_rmsd = [], 0.0
    start = time.perf_counter()
    for name in tqdm(sorted(stored_by_name), desc="GetBestRMS"):
        heavy_refs = [Chem.RemoveHs(m) for m in refs[name]]
        heavy_gens = [Chem.RemoveHs(m) for m in gens.get(name, [])]
        matrix = np.array([[rdMolAlign.GetBestRMS(Chem.Mol(r), g) for g in heavy_gens]
                           for r in heavy_refs]).reshape(len(heavy_refs), len(heavy_gens))
        if matrix.size:
            worst_rmsd = max(worst_rmsd, float(np.abs(matrix - stored_by_name[name]).max()))
        scores.append(molecule_scores(name, matrix, threshold))
    elapsed = time.perf_counter() - start
    metrics = aggregate(scores, threshold)
    print(f"pairwise loop: {elapsed:.1f} s; max |RMSD difference| {worst_rmsd:.2e} A")
    for key, value in metrics.items():
        print(f"{key:20s} pairwise {value!r:24} evaluate {document['metrics'][key]!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
