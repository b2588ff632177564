"""The ensemble as written: optional MMFF94 energies (sorted by them), optional RMSD pruning,
and every conformer aligned to the first on its heavy atoms.

Pruning follows RDKit's ``EmbedMultipleConfs(pruneRmsThresh=A)``: conformers are taken in
order (lowest energy first when energies are computed) and one is kept when its heavy-atom
RMSD, after optimal superposition, to every conformer kept before it is at least A Angstrom
(no symmetry permutations, as ``useSymmetryForPruning=False``).
"""

from __future__ import annotations

import numpy as np
from rdkit import Chem
from rdkit.Chem import AllChem, rdMolAlign

ENERGY_METHODS = ("mmff",)
ENERGY_PROPERTY = "mmff94_energy"  # kcal/mol, single point of the conformer as written
RELATIVE_ENERGY_PROPERTY = "mmff94_relative_energy"  # kcal/mol above the molecule's lowest


def mmff_energies(mol: Chem.Mol) -> np.ndarray | None:
    """[C] MMFF94 single-point energies (kcal/mol, not minimised) of ``mol``'s conformers
    (explicit hydrogens), or None when MMFF94 has no parameters for the molecule."""
    properties = AllChem.MMFFGetMoleculeProperties(mol)
    if properties is None:
        return None
    energies = []
    for conformer in mol.GetConformers():
        field = AllChem.MMFFGetMoleculeForceField(mol, properties, confId=conformer.GetId())
        energies.append(field.CalcEnergy())
    return np.asarray(energies)


def heavy_atom_rmsd(a: np.ndarray, b: np.ndarray) -> float:
    """RMSD (Angstrom) of [N, 3] ``a`` and ``b`` after optimal rotation and translation."""
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    u, _, vt = np.linalg.svd(a.T @ b)
    sign = np.sign(np.linalg.det(u @ vt)) or 1.0
    rotation = u @ np.diag([1.0, 1.0, sign]) @ vt
    return float(np.sqrt(((a @ rotation - b) ** 2).sum(axis=1).mean()))


def prune_by_rms(positions: np.ndarray, threshold: float) -> list[int]:
    """Indices of [C, N, 3] ``positions`` (heavy atoms) kept, in order: each has RMSD >=
    ``threshold`` Angstrom to every one kept before it."""
    kept: list[int] = []
    for index in range(len(positions)):
        if all(heavy_atom_rmsd(positions[index], positions[k]) >= threshold for k in kept):
            kept.append(index)
    return kept


def arrange_ensemble(mol: Chem.Mol, energies: str | None = None,
                     prune_rms: float | None = None) -> tuple[Chem.Mol, list[int], str | None]:
    """``(mol', order, note)``: ``mol`` (explicit hydrogens, conformers 0..C-1) with its
    conformers sorted by MMFF94 energy when ``energies == "mmff"`` (energies as conformer
    properties), pruned at ``prune_rms`` Angstrom, renumbered 0.., and aligned to the first
    on the heavy atoms. ``order[i]`` is the input index of output conformer i; ``note`` says
    why energies are missing (None otherwise)."""
    positions = np.stack([c.GetPositions() for c in mol.GetConformers()])
    order = list(range(len(positions)))
    values, note = None, None
    if energies == "mmff":
        values = mmff_energies(mol)
        if values is None:
            note = "MMFF94 has no parameters for this molecule"
        else:
            order = [int(i) for i in np.argsort(values, kind="stable")]
    heavy = [a.GetIdx() for a in mol.GetAtoms() if a.GetAtomicNum() > 1]
    if prune_rms is not None and heavy:
        kept = prune_by_rms(positions[order][:, heavy], prune_rms)
        order = [order[i] for i in kept]
    out = Chem.Mol(mol)
    out.RemoveAllConformers()
    lowest = min(values[i] for i in order) if values is not None else None
    for index in order:
        conformer = Chem.Conformer(mol.GetNumAtoms())
        conformer.SetPositions(positions[index])
        if values is not None:
            conformer.SetDoubleProp(ENERGY_PROPERTY, round(float(values[index]), 4))
            conformer.SetDoubleProp(RELATIVE_ENERGY_PROPERTY,
                                    round(float(values[index] - lowest), 4))
        out.AddConformer(conformer, assignId=True)
    if out.GetNumConformers() > 1:  # fewer than 3 heavy atoms do not fix an orientation
        atoms = heavy if len(heavy) >= 3 else list(range(out.GetNumAtoms()))
        rdMolAlign.AlignMolConformers(out, atomIds=atoms)
    return out, order, note
