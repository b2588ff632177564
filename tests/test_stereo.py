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


# -- guidance targets and the guidance itself ------------------------------------------------
# centres with 4 explicit neighbours (hydrogens from implicit ones), with 3 (sulfoxide S,
# phosphine P), a centre that is atom 0 with its H written inside the bracket, and E/Z bonds
SIGN_SMILES = STEREO_SMILES + ["[C@H](F)(Cl)Br", "C[S@@](=O)CC", "C[P@](CC)c1ccccc1",
                               "N[C@@H](C)C(=O)O", "C/C(F)=C(/Cl)C", "CC/C=C\\C[C@H](O)C"]


@pytest.mark.parametrize("smiles", SIGN_SMILES)
def test_guidance_sign_conventions_match_rdkit(smiles):
    """The signed volume of (first three neighbours in bond order) is > 0 exactly for CCW, and
    the stereo dihedral is < 90 degrees exactly for cis, on RDKit embeddings (which carry the
    input's stereo) -- and the opposite on their mirror images (centres) / diastereomers."""
    import torch

    from conformer.diffusion.guidance import double_bond_dihedrals, signed_volumes

    mol, positions = embed(smiles, num=3, seed=5)
    targets = StereoChecker(mol).targets()
    assert not targets.empty
    centres = torch.as_tensor(targets.centres)
    bonds = torch.as_tensor(targets.bonds)
    for p in positions:
        x = torch.as_tensor(p)
        volumes = signed_volumes(x, centres).numpy()
        assert (np.sign(volumes) == targets.centre_signs).all()
        assert (np.abs(volumes) > 0.3).all()  # clearly tetrahedral, not a borderline pass
        assert (np.sign(signed_volumes(-x, centres).numpy()) == -targets.centre_signs).all()
        cis = np.abs(double_bond_dihedrals(x, bonds).numpy()) < np.pi / 2
        assert (cis == (targets.bond_signs > 0)).all()
    for index, tag in StereoChecker(mol).centres.items():
        row = targets.centres[targets.centres[:, 0] == index][0]
        bonded = [b.GetOtherAtomIdx(index) for b in mol.GetAtomWithIdx(index).GetBonds()]
        assert row[1:].tolist() == bonded[:3]
        assert (targets.centre_signs[targets.centres[:, 0] == index][0] > 0) == (
            tag == Chem.ChiralType.CHI_TETRAHEDRAL_CCW)


def test_three_neighbour_centres_are_covered():
    mol, _ = embed("C[S@@](=O)CC")
    (index,) = StereoChecker(mol).centres
    assert mol.GetAtomWithIdx(index).GetDegree() == 3


def test_tiled_targets_index_every_copy():
    mol, positions = embed("C[C@H](N)[C@@H](O)C/C=C/C", num=3)
    targets = StereoChecker(mol).targets()
    tiled = targets.tile(3, mol.GetNumAtoms())
    n = mol.GetNumAtoms()
    assert len(tiled.centres) == 3 * len(targets.centres)
    assert (tiled.centres[len(targets.centres):2 * len(targets.centres)] == targets.centres + n).all()
    assert (tiled.bonds[-len(targets.bonds):] == targets.bonds + 2 * n).all()


def _guide(checker, positions, dtype=None, **settings):
    import torch

    from conformer.diffusion.guidance import GuidanceSettings, StereoGuidance

    n = positions.shape[-2]
    count = len(positions)
    guidance = StereoGuidance(checker.targets().tile(count, n),
                              GuidanceSettings(**{"max_iterations": 300, **settings}))
    x = torch.as_tensor(positions.reshape(-1, 3), dtype=dtype or torch.float32)
    out = guidance(x, 0.5)
    return out, x, guidance


def test_guidance_fixes_mirrors_diastereomers_and_wrong_double_bonds():
    mol, good = embed("F/C=C/C[C@@H](Cl)[C@H](N)C", num=2)
    _, diastereomer = embed("F/C=C/C[C@@H](Cl)[C@@H](N)C", num=2)  # same atom order
    _, wrong_bond = embed("F/C=C\\C[C@@H](Cl)[C@H](N)C", num=2)
    checker = StereoChecker(mol)
    bad = np.concatenate([-good, diastereomer, wrong_bond])
    assert not any(checker.check(p).correct for p in bad)
    out, x, guidance = _guide(checker, bad)
    fixed = out.double().numpy().reshape(bad.shape)
    for p in fixed:
        assert checker.check(p).correct, checker.check(p)
    assert guidance.adjusted == 1
    # the centroid does not move (the penalty is translation invariant)
    assert np.allclose(fixed.mean(axis=1), bad.mean(axis=1), atol=1e-5)


def test_guidance_leaves_correct_estimates_untouched_and_waits_for_its_noise_level():
    import torch

    from conformer.diffusion.guidance import GuidanceSettings, StereoGuidance

    mol, good = embed("C[C@H](N)[C@@H](O)C/C=C/C", num=3)
    checker = StereoChecker(mol)
    out, x, guidance = _guide(checker, good)
    assert out is x and guidance.adjusted == 0
    wrong = torch.as_tensor(-good.reshape(-1, 3))
    late = StereoGuidance(checker.targets().tile(3, mol.GetNumAtoms()),
                          GuidanceSettings(sigma_start=1.0))
    assert late(wrong, 2.0) is wrong and late.adjusted == 0
    assert not torch.equal(late(wrong, 1.0), wrong) and late.adjusted == 1


def test_guidance_commutes_with_rotation_and_translation():
    """Rotating/translating the estimate rotates/translates the guided one (float64)."""
    import torch

    from conformer.diffusion.edm import random_rotations

    mol, good = embed("C[C@H](N)[C@@H](O)C/C=C/C", num=2)
    checker = StereoChecker(mol)
    bad = -good
    rotation = random_rotations(1, torch.Generator().manual_seed(3), dtype=torch.float64)[0]
    shift = torch.tensor([0.7, -1.2, 2.0], dtype=torch.float64)
    out, _, _ = _guide(checker, bad, dtype=torch.float64, max_iterations=5)
    moved = torch.as_tensor(bad.reshape(-1, 3)) @ rotation.T + shift
    from conformer.diffusion.guidance import GuidanceSettings, StereoGuidance

    guidance = StereoGuidance(checker.targets().tile(2, mol.GetNumAtoms()),
                              GuidanceSettings(max_iterations=5))
    out_moved = guidance(moved, 0.5)
    assert not torch.allclose(out, torch.as_tensor(bad.reshape(-1, 3)))  # it did act
    assert torch.allclose(out_moved, out @ rotation.T + shift, atol=1e-9)


def test_double_bond_with_both_substituents_on_one_side_is_wrong():
    """A distorted sp2 atom whose two substituents sit on the same side of the double bond has
    no defined E/Z (RDKit's 3D perception may read either), even when the stereo atoms' own
    dihedral is right: flagged, so it is resampled rather than passed."""
    mol, good = embed("C/C(F)=C(/Cl)C", num=1)
    checker = StereoChecker(mol)
    (_, pairs), = checker.bonds
    stereo_atom, begin, end, _, _ = pairs[0]
    other = next(x for x, *_ in pairs if x != stereo_atom)
    distorted = good[0].copy()
    axis = good[0][end] - good[0][begin]
    distorted[other] = good[0][stereo_atom] - 0.4 * axis / np.linalg.norm(axis)
    check = checker.check(distorted)
    assert check.wrong_bonds and not check.mirror_fixes
    assert checker.check(good[0]).correct


def test_guidance_keeps_the_centres_bond_lengths():
    """Flipping mirrored centres moves substituents across them; with length restoration the
    centres' bonds end near their lengths before guidance, without it they stretch."""
    import torch

    mol, good = embed("F/C=C/C[C@@H](Cl)[C@H](N)C", num=2)
    checker = StereoChecker(mol)
    bad = -good
    covalent = checker.targets().covalent
    assert len(covalent) == 11  # every bond not touching an atom of the E/Z bond

    def stretch(**settings):
        out, _, _ = _guide(checker, bad, dtype=torch.float64, **settings)
        fixed = out.numpy().reshape(bad.shape)
        for p in fixed:
            assert checker.check(p).correct
        before = np.linalg.norm(bad[:, covalent[:, 0]] - bad[:, covalent[:, 1]], axis=-1)
        after = np.linalg.norm(fixed[:, covalent[:, 0]] - fixed[:, covalent[:, 1]], axis=-1)
        return np.abs(after - before).max()

    kept, free = stretch(), stretch(length_iterations=0)  # default: restoration on
    assert kept < 0.5 * free, (kept, free)
    assert kept < 0.05, kept
