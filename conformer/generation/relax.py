"""Force-field polish of sampled conformers: MMFF94 minimisation of every atom.

A diffusion model's samples carry small local errors (bond angles, ring puckers, torsions a
few degrees off their minima) that cost RMSD against optimised reference conformers.
Minimising each sample with MMFF94 moves it to the nearest force-field minimum while keeping
its global shape (which basin it is in), the same polish the ``etkdg-mmff`` baseline applies to
ETKDG (``conformer.baselines``, same iteration cap), so the two are compared like for like.
"""

from __future__ import annotations

import numpy as np
from rdkit import Chem
from rdkit.Chem import rdForceFieldHelpers

from conformer.baselines import MMFF_MAX_ITERATIONS


def mmff_minimize(mol: Chem.Mol, positions: np.ndarray,
                  max_iterations: int = MMFF_MAX_ITERATIONS,
                  num_threads: int = 1) -> tuple[np.ndarray, int] | None:
    """Each conformer of ``positions`` [C, N, 3] (Angstrom, on the explicit-hydrogen ``mol``'s
    atoms) minimised with MMFF94, all atoms free.

    Returns (minimised [C, N, 3] Angstrom, number of conformers that stopped at
    ``max_iterations`` before converging), or None when MMFF94 has no parameters for ``mol``
    (the caller keeps the conformers as sampled and says so).
    """
    positions = np.asarray(positions, dtype=np.float64)
    work = Chem.Mol(mol)
    work.RemoveAllConformers()
    if not rdForceFieldHelpers.MMFFHasAllMoleculeParams(work):
        return None
    if len(positions) == 0:
        return positions.copy(), 0
    for xyz in positions:
        conformer = Chem.Conformer(work.GetNumAtoms())
        conformer.SetPositions(xyz)
        work.AddConformer(conformer, assignId=True)
    outcome = rdForceFieldHelpers.MMFFOptimizeMoleculeConfs(
        work, numThreads=int(num_threads), maxIters=int(max_iterations))
    unconverged = sum(1 for not_converged, _ in outcome if not_converged == 1)
    out = np.stack([conformer.GetPositions() for conformer in work.GetConformers()])
    return out, unconverged
