"""Atom and bond featurisation, in one place: what the network sees of a molecular graph.

All features are small categorical indices (the network embeds each column and sums), so the
record stores integers only and the vocabulary is fixed by the constants below.
``FEATURE_VERSION`` is part of the preprocessing parameter hash: bump it whenever anything here
changes, so stale caches are never reused.

Stereochemistry is given in a permutation-invariant form: CIP labels (R/S on atoms, E/Z on
bonds) rather than RDKit's CW/CCW tags, which depend on the order of an atom's neighbours in the
input and so mean nothing to a message-passing network.

Atom feature columns (``ATOM_FEATURE_NAMES``; index 0 of each is "other/none"):
    element           ELEMENTS (index 0 = unsupported element; such molecules are rejected)
    degree            0..6 (capped)
    formal_charge     -2..+2 -> 1..5 (0 = outside range)
    hybridization     S, SP, SP2, SP3, SP3D, SP3D2
    aromatic          0/1
    total_hydrogens   0..4 (capped)
    in_ring           0/1
    ring_size         smallest ring containing the atom: none, 3..8, larger
    cip_label         none, R, S, unassigned stereocentre
Bond feature columns (``BOND_FEATURE_NAMES``):
    bond_type         single, double, triple, aromatic
    conjugated        0/1
    in_ring           0/1
    stereo            none, E, Z, unassigned stereo double bond

Per directed bond edge, a separate array (``keys.CIP_NEIGHBOUR_RANK``, not a bond feature
column, so the columns above and every model trained on them are unchanged):
    cip_neighbour_rank  0 unless the edge's target atom has an R/S label; then the CIP priority
                        of the source among the target's neighbours, 1 (highest) .. 4 (lowest).
                        R/S is only meaningful together with this order (R: 1 -> 2 -> 3 turn
                        clockwise seen with 4 away), so a network that is to place a labelled
                        centre's substituents needs it; it is invariant under every rotation
                        and reflection.
"""


from __future__ import annotations

import numpy as np
from rdkit import Chem

from conformer.data import keys

FEATURE_VERSION = 2  # 2: records carry keys.CIP_NEIGHBOUR_RANK

# Elements seen in GEOM-Drugs and QM9 (index 0 is reserved for "unsupported").
ELEMENTS = ("H", "Li", "B", "C", "N", "O", "F", "Na", "Mg", "Al", "Si", "P", "S", "Cl", "K",
            "Ca", "V", "Cr", "Mn", "Cu", "Zn", "Ga", "Ge", "As", "Se", "Br", "Ag", "In", "Sn",
            "Sb", "Te", "I", "Gd", "Pt", "Au", "Hg", "Bi")
_ELEMENT_INDEX = {symbol: i + 1 for i, symbol in enumerate(ELEMENTS)}
_HYBRIDIZATION = {
    Chem.HybridizationType.S: 1, Chem.HybridizationType.SP: 2, Chem.HybridizationType.SP2: 3,
    Chem.HybridizationType.SP3: 4, Chem.HybridizationType.SP3D: 5,
    Chem.HybridizationType.SP3D2: 6,
}
_BOND_TYPE = {Chem.BondType.SINGLE: 0, Chem.BondType.DOUBLE: 1, Chem.BondType.TRIPLE: 2,
              Chem.BondType.AROMATIC: 3}

ATOM_FEATURE_NAMES = ("element", "degree", "formal_charge", "hybridization", "aromatic",
                      "total_hydrogens", "in_ring", "ring_size", "cip_label")
ATOM_FEATURE_CARDINALITIES = (len(ELEMENTS) + 1, 7, 6, 7, 2, 5, 2, 8, 4)
BOND_FEATURE_NAMES = ("bond_type", "conjugated", "in_ring", "stereo")
BOND_FEATURE_CARDINALITIES = (4, 2, 2, 4)
CIP_NEIGHBOUR_RANK_CARDINALITY = 5  # 0 = target not an R/S centre, 1..4 = priority


class FeaturizationError(ValueError):
    """A molecule this featuriser cannot represent (the message gives the reason)."""


def _ring_size(atom: Chem.Atom, ring_info) -> int:
    if not atom.IsInRing():
        return 0
    for size in range(3, 9):
        if ring_info.IsAtomInRingOfSize(atom.GetIdx(), size):
            return size - 2  # 3..8 -> 1..6
    return 7


def assign_cip(mol: Chem.Mol) -> None:
    """Assign CIP labels (``_CIPCode`` on atoms, bond stereo E/Z) in place, from the graph."""
    Chem.AssignStereochemistry(mol, cleanIt=True, force=True)


def featurize_mol(mol: Chem.Mol) -> dict[str, np.ndarray]:
    """Atom and bond features of ``mol`` (explicit hydrogens expected).

    Returns a dict with ``keys.ATOM_FEATURES`` int64 [N, 9], ``keys.ATOMIC_NUMBERS`` int64 [N],
    ``keys.BOND_INDEX`` int64 [2, E], ``keys.BOND_FEATURES`` int64 [E, 4] (E = 2 x bonds) and
    ``keys.CIP_NEIGHBOUR_RANK`` int64 [E].
    Raises FeaturizationError for an unsupported element or a molecule RDKit cannot sanitise.

    The copy is sanitised first: ``Chem.AddHs`` does not perceive the new atoms (their
    hybridization stays UNSPECIFIED), so a molecule from SMILES + AddHs and the same molecule
    read from a mol block (GEOM, SDF) would otherwise get different features, and a model
    trained on one would be fed the other at generation time.
    """
    mol = Chem.Mol(mol)
    try:
        Chem.SanitizeMol(mol)
    except Exception as error:  # RDKit raises several exception types here
        raise FeaturizationError(f"RDKit cannot sanitise the molecule: {error}") from error
    assign_cip(mol)
    ring_info = mol.GetRingInfo()
    atom_rows = []
    for atom in mol.GetAtoms():
        element = _ELEMENT_INDEX.get(atom.GetSymbol())
        if element is None:
            raise FeaturizationError(f"unsupported element {atom.GetSymbol()}")
        charge = atom.GetFormalCharge()
        cip = atom.GetProp("_CIPCode") if atom.HasProp("_CIPCode") else None
        if cip is not None:
            cip_index = 1 if cip == "R" else 2
        elif atom.HasProp("_ChiralityPossible"):
            cip_index = 3
        else:
            cip_index = 0
        atom_rows.append((
            element,
            min(atom.GetDegree(), 6),
            charge + 3 if -2 <= charge <= 2 else 0,
            _HYBRIDIZATION.get(atom.GetHybridization(), 0),
            int(atom.GetIsAromatic()),
            min(atom.GetTotalNumHs(), 4),
            int(atom.IsInRing()),
            _ring_size(atom, ring_info),
            cip_index,
        ))
    bond_rows, sources, targets = [], [], []
    for bond in mol.GetBonds():
        stereo = bond.GetStereo()
        if stereo in (Chem.BondStereo.STEREOE, Chem.BondStereo.STEREOTRANS):
            stereo_index = 1
        elif stereo in (Chem.BondStereo.STEREOZ, Chem.BondStereo.STEREOCIS):
            stereo_index = 2
        elif stereo == Chem.BondStereo.STEREOANY:
            stereo_index = 3
        else:
            stereo_index = 0
        row = (_BOND_TYPE.get(bond.GetBondType(), 0), int(bond.GetIsConjugated()),
               int(bond.IsInRing()), stereo_index)
        i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        sources += [i, j]
        targets += [j, i]
        bond_rows += [row, row]
    num_features = len(BOND_FEATURE_CARDINALITIES)
    return {
        keys.CIP_NEIGHBOUR_RANK: cip_neighbour_ranks(mol, sources, targets),
        keys.ATOM_FEATURES: np.asarray(atom_rows, dtype=np.int64).reshape(-1, len(ATOM_FEATURE_CARDINALITIES)),
        keys.ATOMIC_NUMBERS: np.asarray([a.GetAtomicNum() for a in mol.GetAtoms()], dtype=np.int64),
        keys.BOND_INDEX: np.asarray([sources, targets], dtype=np.int64).reshape(2, -1),
        keys.BOND_FEATURES: np.asarray(bond_rows, dtype=np.int64).reshape(-1, num_features),
    }


def cip_neighbour_ranks(mol: Chem.Mol, sources: list[int], targets: list[int]) -> np.ndarray:
    """Per directed edge source -> target: the source's CIP priority among the target's
    neighbours (1 = highest) when the target has an R/S label, else 0; int64 [E].

    ``mol`` must have gone through :func:`assign_cip` (it sets ``_CIPRank``, the rank the R/S
    label was computed from; a higher rank is a higher priority)."""
    order: dict[int, dict[int, int]] = {}
    for atom in mol.GetAtoms():
        if not atom.HasProp("_CIPCode"):
            continue
        neighbours = sorted(atom.GetNeighbors(),
                            key=lambda n: n.GetIntProp("_CIPRank") if n.HasProp("_CIPRank") else -1,
                            reverse=True)
        order[atom.GetIdx()] = {n.GetIdx(): min(position + 1, CIP_NEIGHBOUR_RANK_CARDINALITY - 1)
                                for position, n in enumerate(neighbours)}
    return np.asarray([order.get(t, {}).get(s, 0) for s, t in zip(sources, targets, strict=True)],
                      dtype=np.int64).reshape(-1)
