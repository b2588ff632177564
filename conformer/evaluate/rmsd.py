"""Symmetry-aware heavy-atom RMSD matrices, equal to ``rdMolAlign.GetBestRMS(ref, gen)``.

What ``GetBestRMS(prbMol, refMol)`` computes (RDKit 2026.09, ``AlignMolecules.cpp``), and what
this module reproduces for every (reference, generated) pair of a molecule at once:

- the protocol calls ``GetBestRMS(ref, gen)``: the *reference* conformer is the probe (the one
  RDKit moves), the generated conformer is RDKit's "reference";
- atom maps: ``SubstructMatch(gen, probe', uniquify=False, useChirality=False,
  maxMatches=1_000_000)``, where ``probe'`` is the probe with conjugated terminal groups
  symmetrised (``symmetrizeConjugatedTerminalGroups=True``): every terminal O/N matching
  ``[O,N;D1;$([O,N;D1]-[*]=[O,N;D1]),$([O,N;D1]=[*]-[O,N;D1])]~[*]`` gets charge 0 and its bond
  becomes a single-or-double query, so the two oxygens of a carboxylate or nitro group swap;
- for each map, the optimal proper rotation (no reflection) after centring; the result is the
  square root of the smallest mean squared deviation over the maps.

Both molecules are taken heavy-atom only (``RemoveHs``), as the field's evaluation does. The
maps depend only on the two molecular graphs and their atom orders, so they are enumerated once
per distinct (reference graph, generated graph) pair, then every pair x map is aligned in one
vectorised float64 Kabsch step: for centred X (reference) and Y (generated, permuted by the
map), MSD = (|X|^2 + |Y|^2 - 2 (s1 + s2 + d s3)) / n with s the singular values of X^T Y and
d = sign(det(X^T Y)), the determinant correction that forbids a reflection.

Inputs are never modified: coordinates are read into new arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rdkit import Chem

DEFAULT_MAX_MATCHES = 1_000_000  # GetBestRMS's default
_TERMINAL_SMARTS = Chem.MolFromSmarts(
    "[O,N;D1;$([O,N;D1]-[*]=[O,N;D1]),$([O,N;D1]=[*]-[O,N;D1])]~[*]"
)
_SINGLE_OR_DOUBLE = Chem.MolFromSmarts("*-,=*").GetBondWithIdx(0)
# Pairs x maps x 9 float64 held at once while aligning; bounds memory (~ 8 bytes * 9 * this).
_CHUNK_ELEMENTS = 400_000


class RMSDMatchError(ValueError):
    """The generated molecule's graph does not contain the reference graph (GetBestRMS raises)."""


def symmetrize_terminal_groups(mol: Chem.Mol) -> Chem.Mol:
    """A copy of ``mol`` where conjugated terminal O/N groups match either bond order.

    Mirrors RDKit's ``MolAlign::details::symmetrizeTerminalAtoms`` (used by GetBestRMS).
    """
    rw = Chem.RWMol(mol)
    for atom_idx, neighbour_idx in mol.GetSubstructMatches(_TERMINAL_SMARTS):
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


def _graph_key(mol: Chem.Mol) -> tuple:
    """Identifies a heavy-atom graph *with its atom order*: equal keys give equal maps."""
    atoms = tuple((a.GetAtomicNum(), a.GetFormalCharge(), a.GetIsAromatic(), a.GetTotalNumHs(),
                   a.GetNumRadicalElectrons(), a.GetIsotope()) for a in mol.GetAtoms())
    bonds = tuple(sorted((b.GetBeginAtomIdx(), b.GetEndAtomIdx(), str(b.GetBondType()))
                         for b in mol.GetBonds()))
    return atoms, bonds


def _coordinates(mol: Chem.Mol) -> np.ndarray:
    """(n_conformers, n_atoms, 3) float64 coordinates in Angstrom (a new array)."""
    return np.stack([np.asarray(c.GetPositions(), dtype=np.float64) for c in mol.GetConformers()])


@dataclass
class _ConformerSet:
    """Heavy-atom conformers grouped by graph: per group, its template and centred coordinates."""

    templates: list[Chem.Mol]
    coords: list[np.ndarray]  # per group (n_conf, n, 3), centred
    index: list[np.ndarray]  # per group: positions of its conformers in the caller's list


def _group_conformers(mols: list[Chem.Mol]) -> _ConformerSet:
    keys: dict[tuple, int] = {}
    templates, coords, index = [], [], []
    for position, mol in enumerate(mols):
        heavy = heavy_atom_copy(mol)
        key = _graph_key(heavy)
        if key not in keys:
            keys[key] = len(templates)
            templates.append(heavy)
            coords.append([])
            index.append([])
        group = keys[key]
        for xyz in _coordinates(heavy):
            coords[group].append(xyz - xyz.mean(axis=0))
            index[group].append(position)
    return _ConformerSet(templates, [np.stack(c) for c in coords],
                         [np.asarray(i) for i in index])


def _expand(mols: list[Chem.Mol]) -> list[Chem.Mol]:
    """One entry per conformer: multi-conformer molecules are split, order preserved."""
    out = []
    for mol in mols:
        if mol.GetNumConformers() == 0:
            raise ValueError("a molecule without conformers was given for RMSD")
        for conf in mol.GetConformers():
            single = Chem.Mol(mol)
            single.RemoveAllConformers()
            single.AddConformer(Chem.Conformer(conf), assignId=True)
            out.append(single)
    return out


def kabsch_rmsd_min(ref_xyz: np.ndarray, gen_xyz: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """Best-map RMSD for every ref x gen pair, without moving anything.

    ref_xyz: (R, n, 3) centred reference coordinates; gen_xyz: (G, n, 3) centred generated
    coordinates; maps: (M, n) generated atom for each reference atom. Returns (R, G) in Angstrom.
    """
    n_ref, n_atoms, _ = ref_xyz.shape
    n_gen = gen_xyz.shape[0]
    ref_sq = np.einsum("rni,rni->r", ref_xyz, ref_xyz)
    gen_sq = np.einsum("gni,gni->g", gen_xyz, gen_xyz)  # permutation-invariant
    best_msd = np.full((n_ref, n_gen), np.inf)
    per_ref = max(1, _CHUNK_ELEMENTS // max(1, n_gen * len(maps)))
    map_chunk = max(1, _CHUNK_ELEMENTS // max(1, n_gen * min(per_ref, n_ref)))
    for m0 in range(0, len(maps), map_chunk):
        permuted = gen_xyz[:, maps[m0:m0 + map_chunk], :]  # (G, M', n, 3)
        for r0 in range(0, n_ref, per_ref):
            x = ref_xyz[r0:r0 + per_ref]
            cov = np.einsum("rni,gmnj->rgmij", x, permuted, optimize=True)  # (R', G, M', 3, 3)
            sing = np.linalg.svd(cov, compute_uv=False)
            sign = np.sign(np.linalg.det(cov))
            sign[sign == 0] = 1.0
            trace = sing[..., 0] + sing[..., 1] + sign * sing[..., 2]
            msd = (ref_sq[r0:r0 + per_ref, None, None] + gen_sq[None, :, None] - 2.0 * trace)
            msd = np.maximum(msd / n_atoms, 0.0).min(axis=2)
            np.minimum(best_msd[r0:r0 + per_ref], msd, out=best_msd[r0:r0 + per_ref])
    return np.sqrt(best_msd)


def rmsd_matrix(refs: list[Chem.Mol], gens: list[Chem.Mol],
                max_matches: int = DEFAULT_MAX_MATCHES, symmetrize: bool = True,
                on_mismatch: str = "raise") -> np.ndarray:
    """Heavy-atom ``GetBestRMS(ref, gen)`` for every reference x generated conformer.

    refs, gens: molecules (hydrogens optional; each conformer of a multi-conformer molecule
    counts as one entry, in order). Returns (n_ref_conformers, n_gen_conformers) float64, in
    Angstrom. When a generated graph does not match a reference graph, raises
    :class:`RMSDMatchError` (``on_mismatch="raise"``) or fills those entries with NaN
    (``on_mismatch="nan"``). The inputs are not modified.
    """
    ref_set, gen_set = _group_conformers(_expand(refs)), _group_conformers(_expand(gens))
    n_ref = sum(len(i) for i in ref_set.index)
    n_gen = sum(len(i) for i in gen_set.index)
    out = np.empty((n_ref, n_gen))
    # _expand gives one entry per conformer, so a group's entry positions are its rows/columns.
    ref_rows, gen_cols = ref_set.index, gen_set.index
    for ri, ref_template in enumerate(ref_set.templates):
        for gi, gen_template in enumerate(gen_set.templates):
            try:
                if ref_template.GetNumAtoms() != gen_template.GetNumAtoms():
                    raise RMSDMatchError(
                        f"reference has {ref_template.GetNumAtoms()} heavy atoms, generated "
                        f"{gen_template.GetNumAtoms()}")
                maps = symmetry_matches(ref_template, gen_template, max_matches, symmetrize)
            except RMSDMatchError:
                if on_mismatch != "nan":
                    raise
                out[np.ix_(ref_rows[ri], gen_cols[gi])] = np.nan
                continue
            block = kabsch_rmsd_min(ref_set.coords[ri], gen_set.coords[gi], maps)
            out[np.ix_(ref_rows[ri], gen_cols[gi])] = block
    return out


def get_best_rms_reference(ref: Chem.Mol, gen: Chem.Mol, max_matches: int = DEFAULT_MAX_MATCHES,
                           ref_conf_id: int = -1, gen_conf_id: int = -1) -> float:
    """The slow reference: ``rdMolAlign.GetBestRMS`` on heavy-atom copies of one pair."""
    from rdkit.Chem import rdMolAlign

    probe = heavy_atom_copy(Chem.Mol(ref, confId=ref_conf_id) if ref_conf_id >= 0 else ref)
    target = heavy_atom_copy(Chem.Mol(gen, confId=gen_conf_id) if gen_conf_id >= 0 else gen)
    return rdMolAlign.GetBestRMS(probe, target, maxMatches=max_matches)
