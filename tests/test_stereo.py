"""Stereo checks against RDKit-embedded conformers (which respect the input's stereo) and
their mirror images / diastereomers, and the per-conformer correction rules."""

from __future__ import annotations

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem

from conformer.stereo import StereoChecker, correct_ensemble

STEREO_SMILES = [
    "C[C@H](N)C(=O)O",
    "C[C@H](N)[C@@H](O)C[S@](=O)C",
    "F/C=C/C[C@@H](Cl)Br",
    "C/C=C\\c1ccccc1",
    "O[C@@H]1CC[C@H](C)CC1",
    "C[C@@]12CC[C@H]3[C@@H](CC=C4C[C@@H](O)CC[C@@]43C)[C@@H]1CCC2=O",
]


def embed(smiles: str, num: int = 4, seed: int = 11) -> tuple[Chem.Mol, np.ndarray]:
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    ids = list(AllChem.EmbedMultipleConfs(mol, numConfs=num, randomSeed=seed))
    positions = np.stack([mol.GetConformer(i).GetPositions() for i in ids])
    return mol, positions - positions.mean(axis=1, keepdims=True)


@pytest.mark.parametrize("smiles", STEREO_SMILES)
def test_etkdg_conformers_are_correct_and_mirrors_are_inverted(smiles):
    mol, positions = embed(smiles)
    checker = StereoChecker(mol)
    assert checker.has_stereo
    for p in positions:
        check = checker.check(p)
        assert check.correct, check
        mirrored = checker.check(-p)
        if checker.centres:
            assert mirrored.mirror_fixes and not mirrored.correct
            assert len(mirrored.inverted_centres) == len(checker.centres)
        else:  # a reflection keeps cis/trans
            assert mirrored.correct


def test_a_wrong_double_bond_is_detected_and_not_fixed_by_mirroring():
    mol, _ = embed("F/C=C/C[C@@H](Cl)Br")
    _, wrong = embed("F/C=C\\C[C@@H](Cl)Br")  # same atom order, Z instead of E
    check = StereoChecker(mol).check(wrong[0])
    assert check.wrong_bonds and not check.inverted_centres and not check.mirror_fixes


def test_one_of_two_centres_inverted_is_resampled_never_mirrored():
    mol, good = embed("C[C@H](N)[C@@H](O)CC", num=3)
    _, diastereomer = embed("C[C@H](N)[C@H](O)CC", num=3)  # only the second centre differs
    checker = StereoChecker(mol)
    check = checker.check(diastereomer[0])
    assert len(check.inverted_centres) == 1 and not check.mirror_fixes
    calls = []

    def resample(k):
        calls.append(k)
        return good[:k]

    ensemble = np.stack([good[0], diastereomer[0], -good[1]])
    result = correct_ensemble(checker, ensemble, resample, max_resamples=2)
    assert result.correct_before.tolist() == [True, False, False]
    assert result.correct_after.all()
    assert result.tally.reflected == 1 and result.tally.resampled == 1 and calls == [1]
    assert np.allclose(result.positions[2], good[1])  # the all-inverted one was reflected
    assert np.allclose(result.positions[1], good[0])  # the diastereomer was replaced
    for p in result.positions:
        assert checker.check(p).correct


def test_uncorrectable_conformers_stay_flagged():
    mol, _ = embed("C[C@H](N)[C@@H](O)CC")
    _, diastereomer = embed("C[C@H](N)[C@H](O)CC", num=2)
    result = correct_ensemble(StereoChecker(mol), diastereomer, lambda k: diastereomer[:k],
                              max_resamples=2)
    assert not result.correct_after.any()
    assert result.tally.uncorrected == 2 and result.tally.rate_after() == 0.0


def test_molecule_without_stereo_is_not_counted():
    mol, positions = embed("CCOc1ccccc1")
    result = correct_ensemble(StereoChecker(mol), positions, None)
    assert result.correct_after.all() and result.tally.conformers == 0
