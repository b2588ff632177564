"""What the model can be trusted with, checked before generation, and a sanity check of what
comes out, applied after.

Before (model method): every atom's element, formal charge and number of neighbours must be
among those of the training data (``data/train_smiles``: H, C, N, O, F, P, S, Cl, Br, I; the
charges of nitro groups, ammonium, carboxylates, N-oxides...; at most four neighbours on S and
P). The featuriser (``conformer.data.features``) encodes more elements, but a network that
never saw mercury or platinum places them wherever: ``C[Hg]Cl`` came out with C-Hg 1.43 A,
``CC[Pt](Cl)(Cl)N`` with Pt-Cl 1.6 A (2.3 A is right), SF6 with S-F up to 2.01 A. A molecule
of hydrogens only (``[H][H]``) has no heavy atom for the model to place.

After (every method): a conformer whose bonded atoms are closer than ``BOND_RATIO_MIN`` or
farther than ``BOND_RATIO_MAX`` times the sum of their RDKit covalent radii is rejected
(never written, counted in the summary). ETKDG conformers of the training molecules stay
within 0.76 to 1.32 times; the bounds leave room for a model's spread while catching an
atom on top of another or a broken bond.
"""

from __future__ import annotations

import numpy as np
from rdkit import Chem

from conformer.generation.inputs import MoleculeError

# element -> (formal charges, most neighbours), hydrogens counted as neighbours
SUPPORTED_ATOMS: dict[str, tuple[frozenset[int], int]] = {
    "H": (frozenset({0}), 1),
    "C": (frozenset({0}), 4),
    "N": (frozenset({-1, 0, 1}), 4),
    "O": (frozenset({-1, 0, 1}), 3),
    "F": (frozenset({0}), 1),
    "P": (frozenset({0}), 4),
    "S": (frozenset({0, 1}), 4),
    "Cl": (frozenset({0}), 1),
    "Br": (frozenset({0}), 1),
    "I": (frozenset({0}), 1),
}
BOND_RATIO_MIN = 0.6
BOND_RATIO_MAX = 1.5


def check_domain(mol: Chem.Mol) -> None:
    """MoleculeError naming the first atom outside ``SUPPORTED_ATOMS`` (``mol`` with explicit
    hydrogens), or a molecule without heavy atoms."""
    if all(atom.GetAtomicNum() == 1 for atom in mol.GetAtoms()):
        raise MoleculeError("out of the model's domain: no heavy atom")
    for atom in mol.GetAtoms():
        symbol, charge, degree = atom.GetSymbol(), atom.GetFormalCharge(), atom.GetDegree()
        where = f"atom {atom.GetIdx() + 1}"
        if symbol not in SUPPORTED_ATOMS:
            raise MoleculeError(f"unsupported element {symbol} ({where}; the model covers "
                                f"{', '.join(SUPPORTED_ATOMS)})")
        charges, most = SUPPORTED_ATOMS[symbol]
        if charge not in charges:
            allowed = ", ".join(f"{c:+d}" if c else "0" for c in sorted(charges))
            raise MoleculeError(f"unsupported formal charge {charge:+d} on {symbol} ({where}; "
                                f"the model covers {allowed})")
        if degree > most:
            raise MoleculeError(f"unsupported valence: {symbol} with {degree} neighbours "
                                f"({where}; the model covers at most {most})")


def implausible_bonds(mol: Chem.Mol, positions: np.ndarray) -> np.ndarray:
    """[C] bool: True where conformer c of ``positions`` [C, N, 3] Angstrom (``mol``'s atom
    order) has a bond shorter than ``BOND_RATIO_MIN`` or longer than ``BOND_RATIO_MAX`` times
    the sum of its atoms' covalent radii."""
    positions = np.asarray(positions, dtype=np.float64)
    if mol.GetNumBonds() == 0:
        return np.zeros(len(positions), dtype=bool)
    table = Chem.GetPeriodicTable()
    pairs = np.array([(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in mol.GetBonds()])
    radii = np.array([table.GetRcovalent(a.GetAtomicNum()) for a in mol.GetAtoms()])
    reference = radii[pairs[:, 0]] + radii[pairs[:, 1]]
    lengths = np.linalg.norm(positions[:, pairs[:, 0]] - positions[:, pairs[:, 1]], axis=-1)
    ratio = lengths / reference
    return ((ratio < BOND_RATIO_MIN) | (ratio > BOND_RATIO_MAX)).any(axis=1)
