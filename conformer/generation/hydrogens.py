"""Heavy-atom-only models: their graph of a molecule, their stereo targets, and hydrogens
placed by RDKit on what they sample.

A model trained with ``data.hydrogens: implicit`` sees only the heavy atoms (the explicit-H
molecule's features with the hydrogen rows and bonds dropped: ``conformer.data.records.
heavy_atom_graph``, the same function training uses). Heavy atom k is atom
``heavy_atom_indices(z)[k]`` of the explicit-H molecule, so conformers are written in that
molecule's atom order, and the stereo checker judges them with their hydrogens.

Hydrogens go where RDKit's ``Chem.AddHs(..., addCoords=True)`` puts them: along the
directions the heavy atom's other bonds leave free, at RDKit's standard X-H lengths (about
1.09 A for C-H). For a tetrahedral centre with one hydrogen, that is opposite its three heavy
neighbours, so the centre's handedness is the one of its heavy atoms; guidance therefore
steers the heavy atoms (``heavy_atom_targets``).
"""

from __future__ import annotations

import numpy as np
from rdkit import Chem

from conformer.data import keys
from conformer.data.records import HYDROGEN, heavy_atom_graph, heavy_atom_indices, molecule_graph
from conformer.diffusion.guidance import StereoTargets
from conformer.generation.inputs import MoleculeError


def heavy_atom_features(features: dict) -> dict:
    """``features`` (``featurize_mol`` of the explicit-H molecule, record key names) without
    its hydrogens: the heavy atoms' rows, unchanged, and the bonds between them renumbered,
    with their CIP neighbour ranks when ``features`` has them (models with cip_rank_edges)."""
    graph = heavy_atom_graph(molecule_graph(features))
    heavy = {key: graph[field].numpy() for key, field in keys.GRAPH_FIELDS.items()}
    if keys.CIP_NEIGHBOUR_RANK in features:
        heavy[keys.CIP_NEIGHBOUR_RANK] = graph[keys.CIP_NEIGHBOUR_RANK].numpy()
    return heavy


def _heavy_targets(centres, centre_signs, targets: StereoTargets, renumber: np.ndarray,
                   is_h: np.ndarray) -> StereoTargets:
    """StereoTargets on heavy-atom indices (``renumber`` [N] maps full to heavy indices):
    the given ``centres`` [K, 4] (heavy indices already) and ``centre_signs``, and the E/Z
    bonds and kept bond lengths of ``targets`` mapped. In an E/Z bond a hydrogen "other
    substituent" becomes none (the bond atom itself); a hydrogen stereo atom is replaced by
    the other substituent, which is on the other side: the wanted sign flips."""
    bonds, bond_signs = [], []
    for row, sign in zip(targets.bonds, targets.bond_signs, strict=True):
        a, a_other, b, c, d, d_other = (int(i) for i in row)
        if is_h[a]:
            a, a_other, sign = (a_other, b, -sign) if a_other != b and not is_h[a_other] \
                else (a, a_other, sign)
        if is_h[d]:
            d, d_other, sign = (d_other, c, -sign) if d_other != c and not is_h[d_other] \
                else (d, d_other, sign)
        if is_h[a] or is_h[d]:
            continue  # a =CH2 end: no E/Z (the checker would not list it)
        a_other = b if is_h[a_other] else a_other
        d_other = c if is_h[d_other] else d_other
        bonds.append(renumber[[a, a_other, b, c, d, d_other]])
        bond_signs.append(sign)
    covalent = [renumber[pair] for pair in targets.covalent if not is_h[pair].any()]
    return StereoTargets.build(centres, centre_signs, bonds, bond_signs, covalent)


class HeavyAtomPlan:
    """How a heavy-atom-only model handles one explicit-H molecule ``mol`` [N atoms].

    heavy: int64 [H] indices of the heavy atoms in ``mol``; features: their graph (record key
    names); ``targets(full_targets)`` maps stereo targets; ``place(heavy_positions [C, H, 3])
    -> [C, N, 3]`` (Angstrom) adds the hydrogens, optionally relaxed with MMFF94 (heavy atoms
    fixed) when ``relax`` is set. Raises MoleculeError for a molecule whose hydrogens RDKit
    cannot place from its heavy atoms (an H not bonded to exactly one heavy atom).
    """

    def __init__(self, mol: Chem.Mol, features: dict, relax: bool = False):
        self.mol = Chem.Mol(mol)
        self.mol.RemoveAllConformers()
        z = np.array([atom.GetAtomicNum() for atom in self.mol.GetAtoms()], dtype=np.int64)
        self.atomic_numbers = z
        self.heavy = heavy_atom_indices(z)
        if len(self.heavy) == 0:
            raise MoleculeError("no heavy atom: a heavy-atom-only model has nothing to sample")
        for atom in self.mol.GetAtoms():
            if atom.GetAtomicNum() == HYDROGEN and (
                    atom.GetDegree() != 1
                    or atom.GetNeighbors()[0].GetAtomicNum() == HYDROGEN):
                raise MoleculeError(f"hydrogen atom {atom.GetIdx()} is not bonded to exactly "
                                    "one heavy atom; a heavy-atom-only model cannot place it")
        self.features = heavy_atom_features(features)
        self.relax = relax
        self._heavy_mol, self._hydrogen_slots = self._heavy_molecule()

    @property
    def num_heavy(self) -> int:
        return len(self.heavy)

    def _heavy_molecule(self) -> tuple[Chem.Mol, np.ndarray]:
        """The molecule without hydrogens (heavy atoms in ``self.heavy`` order, each with its
        hydrogen count) and, for each hydrogen ``Chem.AddHs`` appends to it, the index of the
        hydrogen of ``self.mol`` whose coordinates it gives (same heavy neighbour)."""
        params = Chem.RemoveHsParameters()
        for name in dir(params):
            if name.startswith("remove") and name != "removeAndTrackIsotopes":
                setattr(params, name, True)
        params.showWarnings = False
        heavy_mol = Chem.RemoveHs(self.mol, params, sanitize=False)
        if heavy_mol.GetNumAtoms() != self.num_heavy:
            raise MoleculeError("RDKit keeps some hydrogens of this molecule; a heavy-atom-only "
                                "model cannot place them")
        heavy_mol.UpdatePropertyCache(strict=False)
        with_h = Chem.AddHs(heavy_mol)
        # the hydrogens of mol per heavy atom (in index order), consumed in AddHs's order
        pending = {int(h): [] for h in self.heavy}
        for atom in self.mol.GetAtoms():
            if atom.GetAtomicNum() == HYDROGEN:
                pending[atom.GetNeighbors()[0].GetIdx()].append(atom.GetIdx())
        slots = []
        for atom in list(with_h.GetAtoms())[self.num_heavy:]:
            owner = int(self.heavy[atom.GetNeighbors()[0].GetIdx()])
            if not pending[owner]:
                raise MoleculeError(f"atom {owner}: RDKit would add more hydrogens than the "
                                    "molecule has")
            slots.append(pending[owner].pop(0))
        if any(pending.values()):
            raise MoleculeError("RDKit would add fewer hydrogens than the molecule has")
        return heavy_mol, np.asarray(slots, dtype=np.int64)

    def targets(self, full: StereoTargets) -> StereoTargets:
        """``full`` (``StereoChecker(mol).targets()``, explicit-H indices) on the heavy atoms.

        A tetrahedral centre is re-expressed by its first three heavy neighbours in bond
        order. With a hydrogen at position k (0..3) of its four neighbours, moving the
        hydrogen to the end is a permutation of parity 3 - k, which flips the wanted sign
        when odd (the sign of the first three's signed volume is that of the ordered four).
        A centre with fewer than three heavy neighbours (an S or P with a hydrogen and a lone
        pair) cannot be steered by heavy atoms and is left out; the checker still judges it.
        """
        is_h = self.atomic_numbers == HYDROGEN
        renumber = np.full(len(is_h), -1, dtype=np.int64)
        renumber[self.heavy] = np.arange(self.num_heavy)
        centres, signs = [], []
        for row, sign in zip(full.centres, full.centre_signs, strict=True):
            centre = int(row[0])
            neighbours = [b.GetOtherAtomIdx(centre)
                          for b in self.mol.GetAtomWithIdx(centre).GetBonds()]
            heavy_neighbours = [i for i in neighbours if not is_h[i]]
            if len(heavy_neighbours) < 3:
                continue
            hydrogens = [k for k, i in enumerate(neighbours) if is_h[i]]
            if len(neighbours) == 4 and len(hydrogens) == 1:
                # (n0, n1, n2, n3) -> heavy neighbours in order + H last: parity 3 - k
                sign = sign * (-1.0 if (3 - hydrogens[0]) % 2 else 1.0)
            elif hydrogens:
                continue
            else:  # no hydrogen: the targets' first three neighbours are all heavy already
                heavy_neighbours = [int(i) for i in row[1:]]
            centres.append(renumber[[centre, *heavy_neighbours[:3]]])
            signs.append(sign)
        return _heavy_targets(centres, signs, full, renumber, is_h)

    def place(self, heavy_positions: np.ndarray) -> np.ndarray:
        """[C, N, 3] Angstrom: ``heavy_positions`` [C, H, 3] at the heavy atoms of ``mol`` and
        RDKit-placed hydrogens (MMFF94-relaxed with the heavy atoms fixed when ``relax``)."""
        heavy_positions = np.asarray(heavy_positions, dtype=np.float64)
        count = heavy_positions.shape[0]
        out = np.zeros((count, self.mol.GetNumAtoms(), 3))
        out[:, self.heavy] = heavy_positions
        if not len(self._hydrogen_slots) or count == 0:
            return out
        heavy_mol = Chem.Mol(self._heavy_mol)
        for xyz in heavy_positions:
            conformer = Chem.Conformer(self.num_heavy)
            conformer.SetPositions(xyz)
            heavy_mol.AddConformer(conformer, assignId=True)
        with_h = Chem.AddHs(heavy_mol, addCoords=True)
        for index, conformer in enumerate(with_h.GetConformers()):
            placed = conformer.GetPositions()[self.num_heavy:]
            out[index, self._hydrogen_slots] = placed
        if self.relax:
            out = relax_hydrogens(self.mol, out)
        return out


def relax_hydrogens(mol: Chem.Mol, positions: np.ndarray, max_iterations: int = 200) -> np.ndarray:
    """[C, N, 3]: each conformer's hydrogens minimised with MMFF94 while every heavy atom stays
    fixed (``positions`` [C, N, 3] Angstrom). A molecule MMFF94 has no parameters for comes
    back unchanged."""
    from rdkit.Chem import rdForceFieldHelpers

    work = Chem.Mol(mol)
    work.RemoveAllConformers()
    properties = rdForceFieldHelpers.MMFFGetMoleculeProperties(work)
    if properties is None:
        return positions
    heavy = [a.GetIdx() for a in work.GetAtoms() if a.GetAtomicNum() != HYDROGEN]
    out = np.array(positions, dtype=np.float64, copy=True)
    for index, xyz in enumerate(out):
        conformer = Chem.Conformer(work.GetNumAtoms())
        conformer.SetPositions(xyz)
        work.RemoveAllConformers()
        work.AddConformer(conformer, assignId=True)
        field = rdForceFieldHelpers.MMFFGetMoleculeForceField(work, properties, confId=0)
        for atom in heavy:
            field.AddFixedPoint(atom)
        field.Initialize()
        field.Minimize(maxIts=max_iterations)
        out[index] = np.asarray(field.Positions()).reshape(-1, 3)
    return out

