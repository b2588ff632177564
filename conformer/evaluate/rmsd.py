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
per distinct (reference graph, generated graph) pair; then every pair x map is aligned at once
in float64: one matrix product gives all covariances C = X^T Y (centred X reference, Y generated
permuted by the map), and MSD = (|X|^2 + |Y|^2 - 2 lambda) / n, where lambda = max over proper
rotations of trace(R C) = s1 + s2 + sign(det C) s3 (the reflection-safe Kabsch optimum) is the
top eigenvalue of Horn's quaternion matrix, found by vectorised Newton steps on its
characteristic polynomial (QCP), with an SVD for the rare entries that do not converge.

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


def max_rotation_overlap(cov: np.ndarray, upper: np.ndarray, iterations: int = 60) -> np.ndarray:
    """max over proper rotations R of trace(R cov) for (..., 3, 3) covariances (float64).

    Equals s1 + s2 + sign(det cov) s3 (singular values s, the reflection-safe Kabsch optimum):
    the largest eigenvalue of Horn's 4x4 quaternion matrix K, found by Newton's method on its
    characteristic polynomial from ``upper`` (>= the root), which converges monotonically from
    above (QCP, Theobald 2005). Entries still moving after the loop are finished with an SVD,
    so the result does not depend on the iteration count.
    """
    components = [cov[..., i, j] for i in range(3) for j in range(3)]
    return overlap_from_components(components, upper)


def overlap_from_components(components: list[np.ndarray], upper: np.ndarray,
                            iterations: int = 60) -> np.ndarray:
    """:func:`max_rotation_overlap` from the nine covariance entries (equal-shape arrays, row
    major: xx, xy, xz, yx, ...), which may be strided views of a larger product."""
    (sxx, sxy, sxz, syx, syy, syz, szx, szy, szz) = components
    shape = sxx.shape
    # K's independent entries
    k00, k11 = sxx + syy + szz, sxx - syy - szz
    k22, k33 = -sxx + syy - szz, -sxx - syy + szz
    k01, k02, k03 = syz - szy, szx - sxz, sxy - syx
    k12, k13, k23 = sxy + syx, szx + sxz, syz + szy
    # det(K) by 2x2 minors of rows (0, 1) and (2, 3); K is symmetric
    m01 = k00 * k11 - k01 * k01
    m02 = k00 * k12 - k01 * k02
    m03 = k00 * k13 - k01 * k03
    m12 = k01 * k12 - k11 * k02
    m13 = k01 * k13 - k11 * k03
    m23 = k02 * k13 - k12 * k03
    n23 = k22 * k33 - k23 * k23
    n13 = k12 * k33 - k13 * k23
    n12 = k12 * k23 - k13 * k22
    n03 = k02 * k33 - k03 * k23
    n02 = k02 * k23 - k03 * k22
    n01 = k02 * k13 - k03 * k12
    c0 = m01 * n23 - m02 * n13 + m03 * n12 + m12 * n03 - m13 * n02 + m23 * n01
    # det(lambda I - K) = lambda^4 + c2 lambda^2 + c1 lambda + c0 (K traceless, symmetric)
    c2 = -2.0 * (sxx * sxx + sxy * sxy + sxz * sxz + syx * syx + syy * syy + syz * syz
                 + szx * szx + szy * szy + szz * szz)
    det3 = (sxx * (syy * szz - syz * szy) - sxy * (syx * szz - syz * szx)
            + sxz * (syx * szy - syy * szx))
    c1 = -8.0 * det3
    # start: the smaller of ``upper`` and sqrt(3) |cov|_F (>= the nuclear norm >= the root)
    lam = np.minimum(np.broadcast_to(upper, shape), np.sqrt(-1.5 * c2))
    tolerance = 1e-14 * np.maximum(np.abs(lam), 1.0)
    two_c2 = 2.0 * c2
    lam2, value, slope = np.empty_like(lam), np.empty_like(lam), np.empty_like(lam)
    done = np.zeros(lam.shape, dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        for iteration in range(iterations):
            # value = (lam^2 + c2) lam^2 + c1 lam + c0;  slope = (4 lam^2 + 2 c2) lam + c1
            np.multiply(lam, lam, out=lam2)
            np.add(lam2, c2, out=value)
            value *= lam2
            np.multiply(lam2, 4.0, out=slope)
            slope += two_c2
            slope *= lam
            slope += c1
            np.multiply(c1, lam, out=lam2)  # lam2 reused as scratch
            value += lam2
            value += c0
            value /= slope  # the Newton step; a zero slope gives inf/nan -> SVD below
            lam -= value
            if iteration >= 4:
                np.less_equal(np.abs(value), tolerance, out=done)
                # Entries stalling at round-off (or converging linearly at a double root)
                # must not keep every entry iterating: past 12 steps the last 1% go to SVD.
                if done.all() or (iteration >= 12 and done.mean() > 0.99):
                    break
    done &= np.isfinite(lam)
    if not done.all():
        rest = np.stack([c[~done] for c in components], axis=-1).reshape(-1, 3, 3)
        sing = np.linalg.svd(rest, compute_uv=False)
        sign = np.where(det3[~done] < 0, -1.0, 1.0)
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
    # One GEMM per chunk: (R'*3, n) @ (n, M'*G*3) gives every covariance X_r^T Y_{g,m}.
    gen_by_atom = np.ascontiguousarray(gen_xyz.transpose(1, 0, 2))  # (n, G, 3)
    for m0 in range(0, len(maps), map_chunk):
        chunk = maps[m0:m0 + map_chunk]
        permuted = gen_by_atom[chunk.T].reshape(n_atoms, -1)  # (n, M'*G*3)
        for r0 in range(0, n_ref, per_ref):
            x = ref_xyz[r0:r0 + per_ref]
            n_r = x.shape[0]
            product = (x.transpose(0, 2, 1).reshape(n_r * 3, n_atoms) @ permuted)
            product = product.reshape(n_r, 3, len(chunk), n_gen, 3)  # (R', i, M', G, j)
            # one copy into (i, j, R', M', G): contiguous entries make the elementwise work fast
            by_entry = np.ascontiguousarray(product.transpose(1, 4, 0, 2, 3))
            components = [by_entry[i, j] for i in range(3) for j in range(3)]
            total = (ref_sq[r0:r0 + per_ref, None, None] + gen_sq[None, None, :])  # (R', 1, G)
            overlap = overlap_from_components(components, 0.5 * total)
            msd = np.maximum((total - 2.0 * overlap) / n_atoms, 0.0).min(axis=1)
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
