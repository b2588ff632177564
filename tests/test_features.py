"""The featuriser: shapes, vocabularies, permutation-invariant stereo labels."""

import numpy as np
import pytest
from rdkit import Chem

from conformer.data import keys
from conformer.data.features import (
    ATOM_FEATURE_CARDINALITIES,
    BOND_FEATURE_CARDINALITIES,
    FeaturizationError,
    featurize_mol,
)


def _features(smiles):
    return featurize_mol(Chem.AddHs(Chem.MolFromSmiles(smiles)))


def test_shapes_and_ranges():
    mol = Chem.AddHs(Chem.MolFromSmiles("CC(=O)Nc1ccc(O)cc1"))
    features = _features("CC(=O)Nc1ccc(O)cc1")
    n_atoms, n_bonds = mol.GetNumAtoms(), mol.GetNumBonds()
    assert features[keys.ATOM_FEATURES].shape == (n_atoms, len(ATOM_FEATURE_CARDINALITIES))
    assert features[keys.BOND_INDEX].shape == (2, 2 * n_bonds)
    assert features[keys.BOND_FEATURES].shape == (2 * n_bonds, len(BOND_FEATURE_CARDINALITIES))
    assert (features[keys.ATOM_FEATURES] < np.array(ATOM_FEATURE_CARDINALITIES)).all()
    assert (features[keys.BOND_FEATURES] < np.array(BOND_FEATURE_CARDINALITIES)).all()
    assert (features[keys.ATOM_FEATURES] >= 0).all()
    # every bond appears in both directions with the same features
    index = features[keys.BOND_INDEX]
    assert np.array_equal(index[:, 0::2], index[::-1, 1::2])
    assert np.array_equal(features[keys.BOND_FEATURES][0::2], features[keys.BOND_FEATURES][1::2])


def test_cip_labels_distinguish_enantiomers_independent_of_atom_order():
    r_form = _features("C[C@@H](N)C(=O)O")[keys.ATOM_FEATURES][:, -1]
    s_form = _features("C[C@H](N)C(=O)O")[keys.ATOM_FEATURES][:, -1]
    assert sorted(r_form[r_form > 0]) != sorted(s_form[s_form > 0])
    # the same molecule written with another atom order gets the same label multiset
    reordered = _features("OC(=O)[C@@H](N)C")[keys.ATOM_FEATURES][:, -1]
    assert sorted(reordered[reordered > 0]) in (sorted(r_form[r_form > 0]), sorted(s_form[s_form > 0]))


def test_double_bond_stereo():
    e_form = _features("C/C=C/C")[keys.BOND_FEATURES][:, -1]
    z_form = _features("C/C=C\\C")[keys.BOND_FEATURES][:, -1]
    assert 1 in e_form and 2 not in e_form
    assert 2 in z_form and 1 not in z_form


def test_unsupported_element_is_rejected_with_reason():
    with pytest.raises(FeaturizationError, match="unsupported element"):
        _features("[U]")


@pytest.mark.parametrize("smiles", ["CC(=O)Nc1ccc(O)cc1", "C[C@H](N)C(=O)O", "c1ccc2[nH]ccc2c1"])
def test_features_do_not_depend_on_how_the_molecule_was_read(smiles):
    """SMILES + AddHs (what `generate` does) and a mol block with explicit hydrogens (what GEOM
    and SDF give, what training sees) must give identical features, hydrogens included."""
    from rdkit.Chem import AllChem

    from_smiles = Chem.AddHs(Chem.MolFromSmiles(smiles))
    AllChem.EmbedMolecule(from_smiles, randomSeed=7)
    from_block = Chem.MolFromMolBlock(Chem.MolToMolBlock(from_smiles), removeHs=False)
    a, b = featurize_mol(from_smiles), featurize_mol(from_block)
    for key in (keys.ATOM_FEATURES, keys.ATOMIC_NUMBERS, keys.BOND_INDEX, keys.BOND_FEATURES,
                keys.CIP_NEIGHBOUR_RANK):
        assert np.array_equal(a[key], b[key]), key
    hydrogens = a[keys.ATOMIC_NUMBERS] == 1
    assert (a[keys.ATOM_FEATURES][hydrogens, 3] > 0).all()  # hybridization perceived for H


def test_cip_neighbour_rank_orders_the_neighbours_of_labelled_centres_only():
    # alanine: the centre's neighbours by CIP priority are N > C(=O)O > CH3 > H
    mol = Chem.AddHs(Chem.MolFromSmiles("C[C@@H](N)C(=O)O"))
    features = featurize_mol(mol)
    source, target = features[keys.BOND_INDEX]
    ranks = features[keys.CIP_NEIGHBOUR_RANK]
    assert ranks.shape == (source.shape[0],) and ranks.dtype == np.int64
    centre = 1
    into_centre = {int(s): int(r) for s, t, r in zip(source, target, ranks, strict=True) if t == centre}
    symbols = {s: mol.GetAtomWithIdx(s).GetSymbol() for s in into_centre}
    by_rank = {rank: symbols[s] for s, rank in into_centre.items()}
    assert by_rank[1] == "N" and by_rank[4] == "H"
    assert mol.GetAtomWithIdx(next(s for s, r in into_centre.items() if r == 2)).GetDegree() == 3
    assert (ranks[target != centre] == 0).all()
    # no stereocentre, no ranks
    assert not _features("CC(=O)Nc1ccc(O)cc1")[keys.CIP_NEIGHBOUR_RANK].any()
