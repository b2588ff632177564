"""MMFF94 polish of sampled conformers (conformer/generation/relax.py)."""

import numpy as np
from rdkit import Chem
from rdkit.Chem import AllChem, rdForceFieldHelpers

from conformer.generation.relax import mmff_minimize


def _embedded(smiles: str, count: int, seed: int = 7) -> Chem.Mol:
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    AllChem.EmbedMultipleConfs(mol, count, randomSeed=seed)
    return mol


def _gradient_norm(mol: Chem.Mol, xyz: np.ndarray) -> float:
    work = Chem.Mol(mol)
    work.RemoveAllConformers()
    conformer = Chem.Conformer(work.GetNumAtoms())
    conformer.SetPositions(xyz)
    work.AddConformer(conformer, assignId=True)
    field = rdForceFieldHelpers.MMFFGetMoleculeForceField(
        work, rdForceFieldHelpers.MMFFGetMoleculeProperties(work))
    return float(np.linalg.norm(field.CalcGrad()))


def test_minimised_conformers_are_mmff_stationary_points_and_match_rdkit():
    mol = _embedded("CC(=O)Nc1ccc(O)cc1C1CCCCC1", count=3)
    rng = np.random.default_rng(0)
    start = np.stack([c.GetPositions() for c in mol.GetConformers()])
    start = start + rng.normal(scale=0.1, size=start.shape)  # a sampler's local noise
    minimised, unconverged = mmff_minimize(mol, start)
    assert minimised.shape == start.shape and unconverged == 0
    for before, after in zip(start, minimised, strict=True):
        assert _gradient_norm(mol, after) < 0.1 * _gradient_norm(mol, before)
        assert _gradient_norm(mol, after) < 1.0  # kcal/mol/A, converged
    # the same as RDKit's own per-conformer minimiser from the same start
    reference = Chem.Mol(mol)
    for conformer, xyz in zip(reference.GetConformers(), start, strict=True):
        conformer.SetPositions(xyz)
    for conf_id in range(reference.GetNumConformers()):
        rdForceFieldHelpers.MMFFOptimizeMolecule(reference, confId=conf_id, maxIters=2000)
    expected = np.stack([c.GetPositions() for c in reference.GetConformers()])
    assert np.abs(minimised - expected).max() < 1e-4
    # the input array is not modified
    assert not np.allclose(start, minimised)


def test_the_iteration_cap_is_reported():
    mol = _embedded("CCCCCCCCCCOc1ccccc1", count=2)
    start = np.stack([c.GetPositions() for c in mol.GetConformers()])
    start = start + np.random.default_rng(1).normal(scale=0.3, size=start.shape)
    _, unconverged = mmff_minimize(mol, start, max_iterations=2)
    assert unconverged == 2


def test_a_molecule_without_mmff_parameters_is_left_to_the_caller():
    mol = _embedded("OB(O)c1ccccc1", count=1)  # MMFF94 does not type boron
    assert not rdForceFieldHelpers.MMFFHasAllMoleculeParams(mol)
    assert mmff_minimize(mol, np.stack([mol.GetConformer().GetPositions()])) is None
