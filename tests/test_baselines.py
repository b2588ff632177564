"""RDKit baselines and validity checks."""

from __future__ import annotations

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem

from conformer.baselines import BaselineError, generate_rdkit
from conformer.evaluate.rmsd import rmsd_matrix
from conformer.evaluate.validity import validity_report

ALANINE = "C[C@H](N)C(=O)O"
STILBENE = "C(/c1ccccc1)=C\\c1ccccc1"


def test_etkdg_distinct_reproducible_conformers_with_hydrogens():
    mol = generate_rdkit(Chem.MolFromSmiles("CCCCOc1ccccc1"), 5, seed=7)
    assert mol.GetNumConformers() == 5
    assert any(a.GetAtomicNum() == 1 for a in mol.GetAtoms())
    again = generate_rdkit(Chem.MolFromSmiles("CCCCOc1ccccc1"), 5, seed=7)
    np.testing.assert_array_equal(mol.GetConformer(3).GetPositions(),
                                  again.GetConformer(3).GetPositions())
    rmsd = rmsd_matrix([mol], [mol])
    assert rmsd[~np.eye(5, dtype=bool)].max() > 0.1  # not all identical (seed != 0)


def test_etkdg_mmff_lowers_mmff_energy_and_bad_arguments():
    smiles = Chem.MolFromSmiles("CCOC(=O)c1ccccc1")
    raw = generate_rdkit(smiles, 3, method="etkdg", seed=11)
    relaxed = generate_rdkit(smiles, 3, method="etkdg-mmff", seed=11)
    props = AllChem.MMFFGetMoleculeProperties(raw)

    def energy(mol, cid):
        return AllChem.MMFFGetMoleculeForceField(mol, props, confId=cid).CalcEnergy()

    for conf in raw.GetConformers():
        assert energy(relaxed, conf.GetId()) < energy(raw, conf.GetId())
    with pytest.raises(ValueError, match="seed 0"):
        generate_rdkit(smiles, 2, seed=0)
    with pytest.raises(ValueError, match="method"):
        generate_rdkit(smiles, 2, method="omega")
    assert issubclass(BaselineError, ValueError)


def test_validity_good_conformers_and_stereo():
    mol = generate_rdkit(Chem.MolFromSmiles(ALANINE), 3, method="etkdg-mmff", seed=3)
    report = validity_report(mol, ALANINE)
    summary = report["summary"]
    assert summary["bonds_ok_fraction_mean"] == 1.0 and summary["angles_ok_fraction_mean"] == 1.0
    assert summary["clash_free_fraction"] == 1.0 and summary["stereo_ok_fraction"] == 1.0
    # The same conformers judged against the enantiomer: every stereo check fails.
    assert validity_report(mol, "C[C@@H](N)C(=O)O")["summary"]["stereo_ok_fraction"] == 0.0
    trans = generate_rdkit(Chem.MolFromSmiles(STILBENE), 2, seed=5)
    assert validity_report(trans, STILBENE)["summary"]["stereo_ok_fraction"] == 1.0
    assert validity_report(trans, "C(/c1ccccc1)=C/c1ccccc1")["summary"]["stereo_ok_fraction"] == 0.0


def test_validity_flags_stretched_bond_and_clash():
    mol = generate_rdkit(Chem.MolFromSmiles("CCCCCCCC"), 1, method="etkdg-mmff", seed=3)
    conf = mol.GetConformer()
    xyz = conf.GetPositions()
    # Fold the chain: put the last carbon next to the first one (a clash, stretched bonds).
    xyz[7] = xyz[0] + np.array([1.0, 0.0, 0.0])
    for i, p in enumerate(xyz):
        conf.SetAtomPosition(i, p.tolist())
    entry = validity_report(mol, "CCCCCCCC")["per_conformer"][0]
    assert entry["n_clashes"] >= 1
    assert entry["bonds_ok_fraction"] < 1.0
    before = mol.GetConformer().GetPositions()
    np.testing.assert_array_equal(before, xyz)  # the report did not minimise the input
