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
from rdkit.Chem import rdMolDescriptors

DEFAULT_MAX_MATCHES = 1_000_000  # GetBestRMS's default
_TERMINAL_SMARTS = Chem.MolFromSmarts(
    "[O,N;D1;$([O,N;D1]-[*]=[O,N;D1]),$([O,N;D1]=[*]-[O,N;D1])]~[*]"
)
_SINGLE_OR_DOUBLE = Chem.MolFromSmarts("*-,=*").GetBondWithIdx(0)
# Pairs x maps x 9 float64 held at once while aligning; bounds memory (~ 8 bytes * 9 * this).
_CHUNK_ELEMENTS = 400_000
_PERMUTED_ELEMENTS = 4_000_000  # (G, M', n, 3) float64 copy: at most ~32 MB


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
    """Identifies a molecular graph *with its atom order* (equal keys give equal maps).

    Built from C++-side arrays to stay cheap per record: the bond-order adjacency matrix and the
    per-atom connectivity invariants (atomic number, degree, H count, charge, isotope, ...).
    """
    adjacency = Chem.GetAdjacencyMatrix(mol, useBO=True, force=True)
    invariants = tuple(rdMolDescriptors.GetConnectivityInvariants(mol,
                                                                  includeRingMembership=False))
    return mol.GetNumAtoms(), adjacency.tobytes(), invariants, Chem.GetFormalCharge(mol)


def _heavy_template(mol: Chem.Mol) -> tuple[Chem.Mol, np.ndarray]:
    """``RemoveHs`` copy of ``mol`` and the indices (into ``mol``) of the atoms it kept."""
    tagged = Chem.Mol(mol)
    tagged.RemoveAllConformers()
    for atom in tagged.GetAtoms():
        atom.SetIntProp("_rmsd_source_idx", atom.GetIdx())
    heavy = Chem.RemoveHs(tagged)
    kept = np.array([a.GetIntProp("_rmsd_source_idx") for a in heavy.GetAtoms()], dtype=np.int64)
    return heavy, kept


@dataclass
class _ConformerSet:
    """Conformers grouped by graph: per group, its heavy-atom template and centred coordinates.

    ``index[g]`` gives the caller's conformer numbers (rows/columns) of group g, in order.
    """

    templates: list[Chem.Mol]
    coords: list[np.ndarray]  # per group (n_conf, n_heavy, 3), centred, Angstrom
    index: list[np.ndarray]
    n_conformers: int


def _group_conformers(mols: list[Chem.Mol]) -> _ConformerSet:
    keys: dict[tuple, int] = {}
    templates, kept_atoms, coords, index = [], [], [], []
    position = 0
    for mol in mols:
        if mol.GetNumConformers() == 0:
            raise ValueError("a molecule without conformers was given for RMSD")
        key = _graph_key(mol)
        if key not in keys:
            keys[key] = len(templates)
            heavy, kept = _heavy_template(mol)
            templates.append(heavy)
            kept_atoms.append(kept)
            coords.append([])
            index.append([])
        group = keys[key]
        if mol.GetNumConformers() == 1:  # the common case (one SDF record), without iterating
            coords[group].append(mol.GetConformer().GetPositions()[kept_atoms[group]])
            index[group].append(position)
            position += 1
            continue
        for conf in mol.GetConformers():
            coords[group].append(conf.GetPositions()[kept_atoms[group]])
            index[group].append(position)
            position += 1
    centred = []
    for group_coords in coords:
        xyz = np.asarray(group_coords, dtype=np.float64)
        centred.append(xyz - xyz.mean(axis=1, keepdims=True))
    return _ConformerSet(templates, centred, [np.asarray(i) for i in index], position)


def _det4(k: np.ndarray) -> np.ndarray:
    """Determinants of (..., 4, 4) matrices by 2x2-minor expansion (elementwise, vectorised)."""
    a = k
    s0 = a[..., 0, 0] * a[..., 1, 1] - a[..., 1, 0] * a[..., 0, 1]
    s1 = a[..., 0, 0] * a[..., 1, 2] - a[..., 1, 0] * a[..., 0, 2]
    s2 = a[..., 0, 0] * a[..., 1, 3] - a[..., 1, 0] * a[..., 0, 3]
    s3 = a[..., 0, 1] * a[..., 1, 2] - a[..., 1, 1] * a[..., 0, 2]
    s4 = a[..., 0, 1] * a[..., 1, 3] - a[..., 1, 1] * a[..., 0, 3]
    s5 = a[..., 0, 2] * a[..., 1, 3] - a[..., 1, 2] * a[..., 0, 3]
    c5 = a[..., 2, 2] * a[..., 3, 3] - a[..., 3, 2] * a[..., 2, 3]
    c4 = a[..., 2, 1] * a[..., 3, 3] - a[..., 3, 1] * a[..., 2, 3]
    c3 = a[..., 2, 1] * a[..., 3, 2] - a[..., 3, 1] * a[..., 2, 2]
    c2 = a[..., 2, 0] * a[..., 3, 3] - a[..., 3, 0] * a[..., 2, 3]
    c1 = a[..., 2, 0] * a[..., 3, 2] - a[..., 3, 0] * a[..., 2, 2]
    c0 = a[..., 2, 0] * a[..., 3, 1] - a[..., 3, 0] * a[..., 2, 1]
    return s0 * c5 - s1 * c4 + s2 * c3 + s3 * c2 - s4 * c1 + s5 * c0


def max_rotation_overlap(cov: np.ndarray, upper: np.ndarray, iterations: int = 60) -> np.ndarray:
    """max over proper rotations R of trace(R cov) for (..., 3, 3) covariances (float64).

    Equals s1 + s2 + sign(det cov) s3 (singular values s, the reflection-safe Kabsch optimum):
    the largest eigenvalue of Horn's 4x4 quaternion matrix, found by Newton's method on its
    characteristic polynomial from ``upper`` (>= the root, e.g. (|X|^2 + |Y|^2) / 2), which
    converges monotonically from above (QCP, Theobald 2005). Entries that have not converged
    after ``iterations`` steps are finished with an SVD, so the result never depends on it.
    """
    sxx, sxy, sxz = cov[..., 0, 0], cov[..., 0, 1], cov[..., 0, 2]
    syx, syy, syz = cov[..., 1, 0], cov[..., 1, 1], cov[..., 1, 2]
    szx, szy, szz = cov[..., 2, 0], cov[..., 2, 1], cov[..., 2, 2]
    horn = np.empty(cov.shape[:-2] + (4, 4))
    horn[..., 0, 0] = sxx + syy + szz
    horn[..., 1, 1] = sxx - syy - szz
    horn[..., 2, 2] = -sxx + syy - szz
    horn[..., 3, 3] = -sxx - syy + szz
    horn[..., 0, 1] = horn[..., 1, 0] = syz - szy
    horn[..., 0, 2] = horn[..., 2, 0] = szx - sxz
    horn[..., 0, 3] = horn[..., 3, 0] = sxy - syx
    horn[..., 1, 2] = horn[..., 2, 1] = sxy + syx
    horn[..., 1, 3] = horn[..., 3, 1] = szx + sxz
    horn[..., 2, 3] = horn[..., 3, 2] = syz + szy
    # det(lambda I - K) = lambda^4 + c2 lambda^2 + c1 lambda + c0 (K is traceless, symmetric)
    c2 = -2.0 * np.einsum("...ij,...ij->...", cov, cov)
    c1 = -8.0 * np.linalg.det(cov) if cov.size else np.zeros(cov.shape[:-2])
    c0 = _det4(horn)
    lam = np.broadcast_to(upper, c0.shape).copy()
    tolerance = 1e-14 * np.maximum(np.abs(lam), 1.0)
    done = np.zeros(lam.shape, dtype=bool)
    for _ in range(iterations):
        lam2 = lam * lam
        value = (lam2 + c2) * lam2 + c1 * lam + c0
        slope = 4.0 * lam2 * lam + 2.0 * c2 * lam + c1
        with np.errstate(divide="ignore", invalid="ignore"):
            step = np.where(slope != 0.0, value / slope, 0.0)
        lam = lam - step
        done = np.abs(step) <= tolerance
        if done.all():
            break
    if not done.all():  # (near-)degenerate top eigenvalues: Newton is slow there
        rest = cov[~done]
        sing = np.linalg.svd(rest, compute_uv=False)
        sign = np.where(np.linalg.det(rest) < 0, -1.0, 1.0)
        lam[~done] = sing[:, 0] + sing[:, 1] + sign * sing[:, 2]
    return lam


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
    # the permuted copy of the generated coordinates is (G, M', n, 3): bound it as well
    map_chunk = max(1, min(map_chunk, _PERMUTED_ELEMENTS // max(1, n_gen * n_atoms * 3)))
    for m0 in range(0, len(maps), map_chunk):
        permuted = gen_xyz[:, maps[m0:m0 + map_chunk], :]  # (G, M', n, 3)
        for r0 in range(0, n_ref, per_ref):
            x = ref_xyz[r0:r0 + per_ref]
            cov = np.einsum("rni,gmnj->rgmij", x, permuted, optimize=True)  # (R', G, M', 3, 3)
            total = ref_sq[r0:r0 + per_ref, None, None] + gen_sq[None, :, None]
            # Two upper bounds of the optimum: (|X|^2+|Y|^2)/2 and the nuclear-norm bound
            # sqrt(3) |cov|_F; Newton starts from the smaller (fewer steps).
            frobenius = np.sqrt(3.0 * np.einsum("...ij,...ij->...", cov, cov))
            overlap = max_rotation_overlap(cov, np.minimum(0.5 * total, frobenius))
            msd = np.maximum((total - 2.0 * overlap) / n_atoms, 0.0).min(axis=2)
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
    ref_set, gen_set = _group_conformers(refs), _group_conformers(gens)
    out = np.empty((ref_set.n_conformers, gen_set.n_conformers))
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
