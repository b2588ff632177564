"""Atom maps of ``rdMolAlign.GetBestRMS(ref, gen)`` and conformers grouped by molecular graph.

What ``GetBestRMS(prbMol, refMol)`` computes (RDKit 2026.09, ``AlignMolecules.cpp``), the part
this module reproduces:

- the protocol calls ``GetBestRMS(ref, gen)``: the *reference* conformer is the probe (the one
  RDKit moves), the generated conformer is RDKit's "reference";
- atom maps: ``SubstructMatch(gen, probe', uniquify=False, useChirality=False,
  maxMatches=1_000_000)``, where ``probe'`` is the probe with conjugated terminal groups
  symmetrised (``symmetrizeConjugatedTerminalGroups=True``): every terminal O/N matching
  ``[O,N;D1;$([O,N;D1]-[*]=[O,N;D1]),$([O,N;D1]=[*]-[O,N;D1])]~[*]`` gets charge 0 and its bond
  becomes a single-or-double query, so the two oxygens of a carboxylate or nitro group swap;
- for each map, the optimal proper rotation (no reflection) after centring (see
  :mod:`conformer.evaluate.rmsd.kernel`).

Both molecules are taken heavy-atom only (``RemoveHs``), as the field's evaluation does. The
maps depend only on the two molecular graphs and their atom orders, so conformers are grouped
by graph (:func:`group_conformers`) and maps are enumerated once per distinct (reference
graph, generated graph) pair. Inputs are never modified: coordinates are read into new arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rdkit import Chem
from rdkit.Chem import rdMolDescriptors

DEFAULT_MAX_MATCHES = 1_000_000  # GetBestRMS's default
_TERMINAL_SMARTS = Chem.MolFromSmarts(
    "[O,N;D1;$([O,N;D1]-[*]=[O,N;D1]),$([O,N;D1]=[*]-[O,N;D1])]~[*]"
)
_SINGLE_OR_DOUBLE = Chem.MolFromSmarts("*-,=*").GetBondWithIdx(0)


class RMSDMatchError(ValueError):
    """The generated molecule's graph does not contain the reference graph (GetBestRMS raises)."""


def symmetrize_terminal_groups(mol: Chem.Mol) -> Chem.Mol:
    """A copy of ``mol`` where conjugated terminal O/N groups match either bond order
    (``mol`` itself when it has none).

    Mirrors RDKit's ``MolAlign::details::symmetrizeTerminalAtoms`` (used by GetBestRMS).
    """
    terminal = mol.GetSubstructMatches(_TERMINAL_SMARTS)
    if not terminal:
        return mol
    rw = Chem.RWMol(mol)
    for atom_idx, neighbour_idx in terminal:
        rw.GetAtomWithIdx(atom_idx).SetFormalCharge(0)
        bond = rw.GetBondBetweenAtoms(atom_idx, neighbour_idx)
        rw.ReplaceBond(bond.GetIdx(), _SINGLE_OR_DOUBLE)
    return rw


def heavy_atom_copy(mol: Chem.Mol) -> Chem.Mol:
    """``RemoveHs`` copy (the input keeps its hydrogens and coordinates)."""
    return Chem.RemoveHs(Chem.Mol(mol))


def symmetry_matches(ref_heavy: Chem.Mol, gen_heavy: Chem.Mol, max_matches: int = DEFAULT_MAX_MATCHES,
                     symmetrize: bool = True) -> np.ndarray:
    """Atom maps as GetBestRMS(ref, gen) enumerates them.

    Returns an int array (M, n_heavy): ``maps[m, i]`` is the generated atom matched to reference
    atom ``i``. Raises :class:`RMSDMatchError` if there is none.
    """
    probe = symmetrize_terminal_groups(ref_heavy) if symmetrize else ref_heavy
    matches = gen_heavy.GetSubstructMatches(probe, uniquify=False, useChirality=False,
                                            useQueryQueryMatches=False, maxMatches=max_matches)
    if not matches:
        raise RMSDMatchError("no substructure match between the reference and generated molecule")
    return np.asarray(matches, dtype=np.int64)


def _graph_signature(mol: Chem.Mol) -> tuple[tuple[int, int], list, bytes]:
    """Identifies a molecular graph *with its atom order* (equal signatures give equal maps).

    Built from C++-side arrays to stay cheap per record (it is paid per conformer): a small
    hashable key (atom and bond counts), the per-atom connectivity invariants (atomic number,
    degree, H count, charge, isotope, ...) as a list and the bond-order adjacency matrix as
    bytes. The last two are compared for equality, never hashed: hashing them would cost more
    than building them.
    """
    return ((mol.GetNumAtoms(), mol.GetNumBonds()),
            rdMolDescriptors.GetConnectivityInvariants(mol, includeRingMembership=False),
            Chem.GetAdjacencyMatrix(mol, useBO=True, force=True).tobytes())


_NOT_HYDROGEN = Chem.MolFromSmarts("[!#1]")


def _heavy_template(mol: Chem.Mol) -> tuple[Chem.Mol, np.ndarray]:
    """``RemoveHs`` copy of ``mol`` and the indices (into ``mol``) of the atoms it kept."""
    # a new molecule: the input keeps its hydrogens. No re-sanitisation: the input is already
    # sanitised and removing hydrogens changes none of what matching reads (elements, charges,
    # bond types, aromaticity), so the maps equal those of a sanitised RemoveHs (tested on all
    # 699 Hutchison molecules) at a third of the cost, which is paid per graph and molecule.
    heavy = Chem.RemoveHs(mol, sanitize=False)
    n_kept = heavy.GetNumAtoms()
    if n_kept == mol.GetNumAtoms():
        return heavy, np.arange(n_kept)
    if n_kept == mol.GetNumHeavyAtoms():
        # RemoveHs drops only hydrogens and keeps atom order: it kept exactly the atoms with
        # atomic number > 1 (the count rules out kept hydrogens and dummies).
        kept = mol.GetSubstructMatches(_NOT_HYDROGEN, uniquify=False, maxMatches=n_kept + 1)
        return heavy, np.sort(np.fromiter((k[0] for k in kept), dtype=np.int64, count=n_kept))
    # some hydrogens or dummy atoms were kept: track indices through RemoveHs
    tagged = Chem.Mol(mol)
    tagged.RemoveAllConformers()
    for atom in tagged.GetAtoms():
        atom.SetIntProp("_rmsd_source_idx", atom.GetIdx())
    heavy = Chem.RemoveHs(tagged)
    kept = np.array([a.GetIntProp("_rmsd_source_idx") for a in heavy.GetAtoms()], dtype=np.int64)
    return heavy, kept


@dataclass
class ConformerSet:
    """Conformers grouped by graph: per group, its heavy-atom template and centred coordinates.

    ``index[g]`` gives the caller's conformer numbers (rows/columns) of group g, in order.
    """

    templates: list[Chem.Mol]
    coords: list[np.ndarray]  # per group (n_conf, n_heavy, 3), centred, Angstrom
    index: list[np.ndarray]
    n_conformers: int


@dataclass
class ConformerArray:
    """Conformers of one topology given as an array, not as RDKit conformers: what the RMSD
    engine reads from a run of SDF records that share a template (building an RDKit conformer
    per record only for the engine to read its positions back cost more than the alignment on
    small molecules).

    ``template``: a molecule with the topology, every atom (its own conformers are ignored);
    ``coords``: (n_conformers, n_atoms, 3) float64, Angstrom, in the template's atom order.
    Counts as ``len(coords)`` entries of the engine's input, in order.
    """

    template: Chem.Mol
    coords: np.ndarray

    def GetNumConformers(self) -> int:  # noqa: N802 - the Chem.Mol method the engine calls
        return len(self.coords)


def group_conformers(mols: list[Chem.Mol | ConformerArray]) -> ConformerSet:
    """Group ``mols`` (molecules, each conformer one entry, or :class:`ConformerArray`) by
    graph (see :func:`_graph_signature`)."""
    groups: dict[tuple, list[tuple[list, bytes, int]]] = {}  # key -> (inv., adjacency, group)
    templates, kept_atoms, positions, group_of = [], [], [], []
    last = None  # (invariants, adjacency, group) of the previous conformer
    for mol in mols:
        array = mol.coords if isinstance(mol, ConformerArray) else None
        topology = mol.template if array is not None else mol
        key, invariants, adjacency = _graph_signature(topology)
        if last is not None and last[1] == adjacency and last[0] == invariants:
            group = last[2]  # the common case: the same graph as the conformer before
        else:
            candidates = groups.setdefault(key, [])
            group = next((g for i, a, g in candidates if a == adjacency and i == invariants),
                         None)
        if group is None:
            group = len(templates)
            candidates.append((invariants, adjacency, group))
            heavy, kept = _heavy_template(topology)
            templates.append(heavy)
            kept_atoms.append(kept)
            positions.append([])
        last = (invariants, adjacency, group)
        if array is not None:
            n_confs = len(array)
            positions[group].append(array)
        else:
            n_confs = mol.GetNumConformers()
            # (1, n, 3) or (k, n, 3) arrays, new ones: the inputs stay put
            positions[group].append(mol.GetConformer().GetPositions()[None] if n_confs == 1
                                    else np.array([c.GetPositions() for c in mol.GetConformers()]))
        if n_confs == 0:
            raise ValueError("a molecule without conformers was given for RMSD")
        group_of.extend([group] * n_confs)
    if len(templates) == 1:  # the common case: one graph
        index = [np.arange(len(group_of))]
    else:
        group_of = np.asarray(group_of, dtype=np.int64)
        index = [np.flatnonzero(group_of == g) for g in range(len(templates))]
    centred = []
    for group_positions, kept in zip(positions, kept_atoms, strict=True):
        # a new array (concatenate or index copies): the inputs stay put
        xyz = (np.concatenate(group_positions) if len(group_positions) > 1
               else np.array(group_positions[0], dtype=np.float64))
        if len(kept) != xyz.shape[1]:
            xyz = xyz[:, kept]
        xyz -= xyz.mean(axis=1, keepdims=True)
        centred.append(xyz)
    return ConformerSet(templates, centred, index, len(group_of))


def get_best_rms_reference(ref: Chem.Mol, gen: Chem.Mol, max_matches: int = DEFAULT_MAX_MATCHES,
                           ref_conf_id: int = -1, gen_conf_id: int = -1) -> float:
    """The slow reference: ``rdMolAlign.GetBestRMS`` on heavy-atom copies of one pair."""
    from rdkit.Chem import rdMolAlign

    probe = heavy_atom_copy(Chem.Mol(ref, confId=ref_conf_id) if ref_conf_id >= 0 else ref)
    target = heavy_atom_copy(Chem.Mol(gen, confId=gen_conf_id) if gen_conf_id >= 0 else gen)
    return rdMolAlign.GetBestRMS(probe, target, maxMatches=max_matches)
