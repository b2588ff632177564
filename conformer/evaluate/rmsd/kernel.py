"""The closed-form alignment kernel: best-map heavy-atom RMSD for every pair at once.

Every (reference, generated) pair x atom map is aligned at once in float64: one matrix product
gives all covariances C = X^T Y (centred X reference, Y generated permuted by the map), and
MSD = (|X|^2 + |Y|^2 - 2 lambda) / n, where lambda = max over proper rotations of trace(R C) =
s1 + s2 + sign(det C) s3 (the reflection-safe Kabsch optimum) is the top eigenvalue of Horn's
quaternion matrix. It comes in closed form from three invariants of C (see
:func:`overlap_from_entries`), polished by one Newton step on the quaternion matrix's
characteristic polynomial (as in QCP, Theobald 2005), with an SVD for the rare degenerate
entries; only the best map per pair is kept. :func:`rmsd_matrix` puts the maps of
:mod:`conformer.evaluate.rmsd.symmetry` and this kernel together for one molecule.

Inputs are never modified: coordinates are read into new arrays.
"""

from __future__ import annotations

import numpy as np
from rdkit import Chem

from conformer.evaluate.rmsd.symmetry import (
    DEFAULT_MAX_MATCHES,
    ConformerSet,
    RMSDMatchError,
    group_conformers,
    symmetry_matches,
)

# Memory bounds while aligning (float64): covariances per GEMM (9 * 8 bytes each, ~4.7 MB),
# the permuted generated coordinates (G, M', n, 3) (~32 MB), and covariances per closed-form
# call: with preallocated temporaries (_Workspace, ~0.7 MB at 4,096) 2,048 and 4,096 ran
# alike and 1.2x faster than 1,024 on this project's 2-core Xeon (fewer NumPy calls per
# covariance); 8,192 was slower again (cache). Since the cofactors are products of rows (no
# (9, L) gathers), 4,096 is about 1 ms faster than 2,048 on the GEOM-sized benchmark set.
_GEMM_PAIRS = 65_536
_PERMUTED_ELEMENTS = 4_000_000
_KERNEL_ELEMENTS = 4_096
# Blocks of at most _SMALL_BLOCK covariances are pooled across molecules until _BATCH_ELEMENTS
# covariances wait (~19 MB of entries), then evaluated together.
_SMALL_BLOCK = 4_096
_BATCH_ELEMENTS = 262_144


# Cofactor (i, j) of a 3x3 matrix, C[i+1, j+1] C[i+2, j+2] - C[i+1, j+2] C[i+2, j+1] (indices
# mod 3), as four rows of the entry-major layout (row 3 r + c holds C[r, c]).
_COFACTOR_ROWS = np.array([[3 * ((i + 1) % 3) + (j + 1) % 3, 3 * ((i + 2) % 3) + (j + 2) % 3,
                            3 * ((i + 1) % 3) + (j + 2) % 3, 3 * ((i + 2) % 3) + (j + 1) % 3]
                           for i in range(3) for j in range(3)]).T
_COFACTOR_PAIRS = [tuple(int(v) for v in column) for column in _COFACTOR_ROWS.T]
_TWO_PI_OVER_3 = 2.0943951023931953


class _Workspace:
    """Preallocated float64 temporaries for :func:`overlap_from_entries` on up to ``size``
    covariances: the closed form's ~40 operations then allocate nothing, so that larger
    chunks (fewer NumPy calls per covariance) stay fast; with fresh temporaries per operation
    they were slower above ~1,000 covariances on this project's machine (allocator traffic)."""

    def __init__(self, size: int, dtype=np.float64):
        self.size, self.dtype = size, np.dtype(dtype)
        self.cofactors, self.product = np.empty((9, size), dtype), np.empty(size, dtype)
        self.scalars = np.empty((12, size), dtype)


def max_rotation_overlap(cov: np.ndarray) -> np.ndarray:
    """max over proper rotations R of trace(R C) for covariances C (..., 3, 3), float64.

    Equals s1 + s2 + sign(det C) s3 (singular values s1 >= s2 >= s3): the largest eigenvalue
    of Horn's 4x4 quaternion key matrix, i.e. the Kabsch optimum without reflections.
    """
    cov = np.asarray(cov, dtype=np.float64)
    entries = np.ascontiguousarray(np.moveaxis(cov.reshape(-1, 9), -1, 0))
    return overlap_from_entries(entries).reshape(cov.shape[:-2])


def overlap_from_entries(entries: np.ndarray, out: np.ndarray | None = None,
                         workspace: _Workspace | None = None,
                         degenerate: str = "svd") -> np.ndarray:
    """:func:`max_rotation_overlap` for covariances given entry-major: (9, L) rows xx, xy, xz,
    yx, ..., zz (row-major 3x3), each row contiguous (a row slice of a larger array is fine).

    Closed form, no iteration over the pairs: with a = |C|_F^2, b = the sum of squared 2x2
    minors of C and d = det C, the squared singular values are the roots of
    mu^3 - a mu^2 + b mu - d^2 (solved by the trigonometric method), s3 = d / (s1 s2) carries
    the sign, and Horn's key matrix has the characteristic polynomial
    lambda^4 - 2a lambda^2 - 8d lambda + a^2 - 4b, whose largest root is the answer. One
    Newton step on that quartic polishes the closed form to float64 round-off; entries whose
    step is not tiny (degenerate spectra: collinear or all-zero covariances) get an SVD.
    Returns (L,) in the units of C, written into ``out`` when given; ``workspace`` (at least L
    wide, of the entries' dtype) holds the temporaries.

    float32 entries (the pre-pass of :func:`_prescreen_keep`) are polished to a looser
    tolerance and, with ``degenerate="nan"``, their degenerate entries come back NaN
    ("unknown") instead of going to an SVD.
    """
    n = entries.shape[-1]
    dtype = entries.dtype if entries.dtype == np.float32 else np.dtype(np.float64)
    if workspace is None or workspace.size < n or workspace.dtype != dtype:
        workspace = _Workspace(n, dtype)
    if out is None:
        out = np.empty(n, dtype)
    tolerance = _POLISH_TOLERANCE if dtype == np.float64 else _POLISH_TOLERANCE_FLOAT32
    cofactors, right = workspace.cofactors[:, :n], workspace.product[:n]
    # row by row from the entries' own rows: gathering the four (9, L) operands by fancy
    # indexing cost more than the products (same values: one product each, one difference)
    for k, (p, q, r, t) in enumerate(_COFACTOR_PAIRS):
        np.multiply(entries[p], entries[q], out=cofactors[k])
        np.multiply(entries[r], entries[t], out=right)
        cofactors[k] -= right
    det, a, b, third, minus_p_third, q, radius, angle, s1, s2, lam, tmp = \
        workspace.scalars[:, :n]
    np.einsum("jk,jk->k", entries[:3], cofactors[:3], out=det)  # first-row expansion
    np.einsum("ik,ik->k", entries, entries, out=a)
    np.einsum("ik,ik->k", cofactors, cofactors, out=b)
    # depressed cubic in mu - a/3:  t^3 + p t + q = 0 with p = b - a^2/3 <= 0
    np.multiply(a, 1.0 / 3.0, out=third)
    np.multiply(third, third, out=minus_p_third)
    np.multiply(b, 1.0 / 3.0, out=tmp)
    minus_p_third -= tmp
    np.multiply(a, third, out=q)  # q = third (b - 2 a third / 3) - d^2
    q *= -2.0 / 3.0
    q += b
    q *= third
    np.multiply(det, det, out=tmp)
    q -= tmp
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        np.sqrt(minus_p_third, out=radius)  # round-off can make it < 0 -> NaN -> SVD
        np.multiply(minus_p_third, radius, out=tmp)
        np.divide(q, tmp, out=angle)
        angle *= -0.5
        np.clip(angle, -1.0, 1.0, out=angle)  # NaN (all mu equal) stays NaN -> SVD below
        np.arccos(angle, out=angle)
        angle /= 3.0
        radius *= 2.0
        np.cos(angle, out=s1)
        s1 *= radius
        s1 += third  # mu1
        angle -= _TWO_PI_OVER_3
        np.cos(angle, out=s2)
        s2 *= radius
        s2 += third  # mu2
        np.sqrt(s1, out=s1)
        np.sqrt(s2, out=s2)
        np.multiply(s1, s2, out=tmp)
        np.divide(det, tmp, out=lam)
        lam += s1
        lam += s2
        # one Newton step on P(lam) = lam^4 - 2a lam^2 - 8d lam + a^2 - 4b
        lam_sq, value, slope = s1, s2, radius  # reused buffers
        np.multiply(lam, lam, out=lam_sq)
        det *= 8.0
        np.multiply(a, -2.0, out=value)
        value += lam_sq
        value *= lam_sq
        np.multiply(det, lam, out=tmp)
        value -= tmp
        np.multiply(a, a, out=tmp)
        value += tmp
        np.multiply(b, 4.0, out=tmp)
        value -= tmp
        np.subtract(lam_sq, a, out=slope)
        slope *= lam
        slope *= 4.0
        slope -= det
        value /= slope
        np.subtract(lam, value, out=out)
        np.abs(value, out=value)
        np.maximum(out, 1.0, out=tmp)
        tmp *= tolerance
        good = value <= tmp
    if degenerate == "nan":
        out[~good] = np.nan
    elif not good.all():
        bad = ~good
        rest = entries[:, bad].T.reshape(-1, 3, 3)
        sing = np.linalg.svd(rest, compute_uv=False)
        sign = np.where(np.linalg.det(rest) < 0, -1.0, 1.0)
        out[bad] = sing[:, 0] + sing[:, 1] + sign * sing[:, 2]
    return out


# A closed-form value this close to a simple root is exact to round-off after the Newton step.
_POLISH_TOLERANCE = 1e-9
# The float32 pre-pass's version: a Newton step above 1e-4 relative marks an entry whose float32
# value is not trusted (kept for float64 whatever its value). On the GEOM-sized benchmark set
# (265,000 pre-pass covariances) 3% are untrusted and the trusted ones are within 1.1e-5 of
# |X| |Y| of float64; at 1e-5, 16% were untrusted (float32 noise in the quartic alone), at
# 1e-3 the trusted error reached 3.8e-4, too close to the margin below.
_POLISH_TOLERANCE_FLOAT32 = 1e-4
# The float32 pre-pass keeps, per pair, every map whose float32 overlap lies within
# _PRESCREEN_MARGIN * |X| |Y| of the pair's best float32 overlap (|X| |Y| bounds every overlap
# by Cauchy-Schwarz), plus every map whose float32 value is untrusted, and recomputes those in
# float64. Keeping the float64 winner needs the margin to exceed twice the float32 error; the
# largest error seen (benchmark sets, random covariances; tests check it) is about 1.1e-5 of
# |X| |Y|, so 1e-3 leaves a factor of 45. In MSD the margin is a band of about 0.002 Rg^2
# (Rg: radius of gyration): maps that close are rare, and ~1.3 maps per pair are recomputed.
_PRESCREEN_MARGIN = 1e-3
# float32 covariances per pre-pass closed-form call (~1.4 MB of temporaries): on the GEOM-sized
# benchmark set 16,384 was ~2 ms faster than 8,192 (fewer NumPy calls), 32,768 no faster
_KERNEL_ELEMENTS_FLOAT32 = 16_384


def kabsch_rmsd_min(ref_xyz: np.ndarray, gen_xyz: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """Best-map RMSD for every ref x gen pair, without moving anything.

    ref_xyz: (R, n, 3) centred reference coordinates; gen_xyz: (G, n, 3) centred generated
    coordinates; maps: (M, n) generated atom for each reference atom. Returns (R, G) in Angstrom.
    """
    ref_xyz = np.asarray(ref_xyz, dtype=np.float64)
    gen_xyz = np.asarray(gen_xyz, dtype=np.float64)
    maps = np.asarray(maps)
    n_ref, n_atoms, _ = ref_xyz.shape
    n_gen, n_maps = gen_xyz.shape[0], len(maps)
    ref_sq = np.einsum("rni,rni->r", ref_xyz, ref_xyz)
    gen_sq = np.einsum("gni,gni->g", gen_xyz, gen_xyz)  # permutation-invariant
    best = np.full((n_ref, n_gen), -np.inf)  # max over maps of the rotation overlap
    # Chunks: the permuted copy of the generated coordinates is (n, M', G, 3); each GEMM
    # output (R' * 3, M' * G * 3) holds R' * M' * G covariances.
    map_chunk = max(1, min(n_maps, _PERMUTED_ELEMENTS // max(1, n_gen * n_atoms * 3),
                           _GEMM_PAIRS // max(1, n_gen)))
    per_ref = max(1, min(n_ref, _GEMM_PAIRS // max(1, n_gen * map_chunk)))
    gen_by_atom = np.ascontiguousarray(gen_xyz.transpose(1, 0, 2))  # (n, G, 3)
    workspace = _Workspace(_KERNEL_ELEMENTS)
    ref_rows = np.ascontiguousarray(ref_xyz.transpose(0, 2, 1)).reshape(n_ref * 3, n_atoms)
    workspace32 = _Workspace(_KERNEL_ELEMENTS_FLOAT32, np.float32) if n_maps > 1 else None
    ref_norm, gen_norm = np.sqrt(ref_sq), np.sqrt(gen_sq)
    for m0 in range(0, n_maps, map_chunk):
        chunk = maps[m0:m0 + map_chunk]
        n_m = len(chunk)
        permuted = gen_by_atom[chunk.T].reshape(n_atoms, n_m * n_gen * 3)
        for r0 in range(0, n_ref, per_ref):
            n_r = min(per_ref, n_ref - r0)
            product = ref_rows[3 * r0:3 * (r0 + n_r)] @ permuted  # (r, i) x (m, g, j)
            # (i, j, r, m, g): entry-major order, contiguous rows for the closed form
            by_entry = product.reshape(n_r, 3, n_m * n_gen, 3).transpose(1, 3, 0, 2)
            block = best[r0:r0 + n_r]
            if n_m == 1:
                overlap = _chunked_overlap(np.ascontiguousarray(by_entry).reshape(9, -1),
                                           workspace)
                np.maximum(block, overlap.reshape(n_r, n_gen), out=block)
                continue
            # several maps: a float32 pass picks the maps that can win, float64 decides
            margin = _PRESCREEN_MARGIN * ref_norm[r0:r0 + n_r, None] * gen_norm[None, :]
            kept = np.flatnonzero(_prescreen_keep(by_entry, n_r, n_m, n_gen, margin,
                                                  workspace32))
            rows, columns = np.divmod(kept, n_m * n_gen)
            # the kept covariances, entry-major: the same float64 values as the whole pass
            entries = np.ascontiguousarray(
                product.reshape(n_r, 3, n_m * n_gen, 3)[rows, :, columns, :].reshape(-1, 9).T)
            overlap = np.full(n_r * n_m * n_gen, -np.inf)
            overlap[kept] = _chunked_overlap(entries, workspace)
            np.maximum(block, overlap.reshape(n_r, n_m, n_gen).max(axis=1), out=block)
    return _rmsd_from_overlap(best, ref_sq, gen_sq, n_atoms)


def _prescreen_keep(by_entry: np.ndarray, n_ref: int, n_maps: int, n_gen: int,
                    margin: np.ndarray, workspace: _Workspace | None = None) -> np.ndarray:
    """Which (reference, map, generated) covariances can hold their pair's best overlap.

    by_entry: (3, 3, R, M * G) float64 covariances (any strides); margin: (R, G), in the
    units of the overlap. Returns a flat bool mask over (R, M, G): per pair, every map whose
    float32 overlap is within ``margin`` of the pair's best float32 overlap, and every map
    whose float32 value is untrusted (degenerate spectrum). With |float32 - float64| below
    margin / 2 for every map, the pair's float64 maximum is among the kept maps.
    """
    size = n_ref * n_maps * n_gen
    entries32 = np.empty((3, 3, n_ref, n_maps * n_gen), np.float32)
    np.copyto(entries32, by_entry, casting="same_kind")  # the transposing copy, cast
    entries32 = entries32.reshape(9, size)
    if workspace is None or workspace.size < min(size, _KERNEL_ELEMENTS_FLOAT32):
        workspace = _Workspace(min(size, _KERNEL_ELEMENTS_FLOAT32), np.float32)
    overlap = np.empty(size, np.float32)
    for e0 in range(0, size, _KERNEL_ELEMENTS_FLOAT32):
        e1 = min(size, e0 + _KERNEL_ELEMENTS_FLOAT32)
        overlap_from_entries(entries32[:, e0:e1], overlap[e0:e1], workspace, degenerate="nan")
    overlap = overlap.reshape(n_ref, n_maps, n_gen)
    unknown = np.isnan(overlap)
    # the best trusted float32 value per pair (-inf when none is trusted: all maps kept)
    best = np.where(unknown, -np.inf, overlap).max(axis=1)
    keep = overlap >= (best - margin)[:, None, :]
    keep |= unknown
    return keep.reshape(-1)


def _chunked_overlap(entries: np.ndarray, workspace: _Workspace | None = None) -> np.ndarray:
    """:func:`overlap_from_entries` of (9, L) entries, _KERNEL_ELEMENTS covariances at a time
    (their temporaries stay in a core's cache), sharing one workspace. Returns (L,)."""
    size = entries.shape[1]
    if workspace is None or workspace.size < min(size, _KERNEL_ELEMENTS):
        workspace = _Workspace(min(size, _KERNEL_ELEMENTS))
    overlap = np.empty(size)
    for e0 in range(0, size, _KERNEL_ELEMENTS):
        e1 = min(size, e0 + _KERNEL_ELEMENTS)
        overlap_from_entries(entries[:, e0:e1], overlap[e0:e1], workspace)
    return overlap


def _rmsd_from_overlap(best: np.ndarray, ref_sq: np.ndarray, gen_sq: np.ndarray,
                       n_atoms: int) -> np.ndarray:
    """RMSD (R, G) from the best rotation overlap per pair (R, G), |X|^2 (R,), |Y|^2 (G,)."""
    msd = ref_sq[:, None] + gen_sq[None, :]
    msd -= 2.0 * best
    msd /= n_atoms
    np.maximum(msd, 0.0, out=msd)
    return np.sqrt(msd, out=msd)


class _OverlapBatch:
    """Covariances of small (reference group x generated group) blocks, from many molecules,
    evaluated by one closed-form pass: for molecules of a few dozen pairs, the fixed cost of
    the closed form's ~60 NumPy calls, paid per block, would otherwise dominate.

    ``add`` computes a block's covariance entries now and, at ``flush``, writes its RMSD into
    ``out[rows][:, cols]`` (``rows``/``cols`` None: the whole of ``out``). Results equal
    :func:`kabsch_rmsd_min`'s to round-off: the same products, and the closed form is
    elementwise.
    """

    def __init__(self) -> None:
        self.entries: list[np.ndarray] = []
        self.blocks: list[tuple] = []
        self.size = 0

    @staticmethod
    def fits(n_ref: int, n_gen: int, n_maps: int) -> bool:
        return n_ref * n_gen * n_maps <= _SMALL_BLOCK

    def add(self, ref_xyz, gen_xyz, maps, out: np.ndarray, rows, cols) -> None:
        n_ref, n_atoms, _ = ref_xyz.shape
        n_gen, n_maps = gen_xyz.shape[0], len(maps)
        permuted = gen_xyz.transpose(1, 0, 2)[maps.T].reshape(n_atoms, n_maps * n_gen * 3)
        ref_rows = ref_xyz.transpose(0, 2, 1).reshape(n_ref * 3, n_atoms)
        product = ref_rows @ permuted  # (r, i) x (m, g, j)
        self.entries.append(
            product.reshape(n_ref, 3, n_maps * n_gen, 3).transpose(1, 3, 0, 2).reshape(9, -1))
        ref_sq = np.einsum("rni,rni->r", ref_xyz, ref_xyz)
        gen_sq = np.einsum("gni,gni->g", gen_xyz, gen_xyz)
        self.blocks.append((n_ref, n_maps, n_gen, ref_sq, gen_sq, n_atoms, out, rows, cols))
        self.size += n_ref * n_maps * n_gen

    def flush(self) -> None:
        if not self.blocks:
            return
        entries = np.concatenate(self.entries, axis=1) if len(self.entries) > 1 \
            else np.ascontiguousarray(self.entries[0])
        overlap = _chunked_overlap(entries)
        start = 0
        for n_ref, n_maps, n_gen, ref_sq, gen_sq, n_atoms, out, rows, cols in self.blocks:
            stop = start + n_ref * n_maps * n_gen
            best = overlap[start:stop].reshape(n_ref, n_maps, n_gen).max(axis=1)
            rmsd = _rmsd_from_overlap(best, ref_sq, gen_sq, n_atoms)
            if rows is None:
                out[...] = rmsd
            else:
                out[np.ix_(rows, cols)] = rmsd
            start = stop
        self.entries, self.blocks, self.size = [], [], 0


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
    return matrices_in_process([(refs, gens)], max_matches, symmetrize, on_mismatch)[0]


def matrices_in_process(problems, max_matches: int, symmetrize: bool, on_mismatch: str,
                         progress=None) -> list[np.ndarray]:
    """:func:`rmsd_matrix` of each ``(refs, gens)``, small blocks batched across molecules.
    ``progress(n)`` is called as molecules' matrices become final."""
    batch = _OverlapBatch()
    out, pending = [], 0
    for refs, gens in problems:
        ref_set, gen_set = group_conformers(refs), group_conformers(gens)
        matrix = np.empty((ref_set.n_conformers, gen_set.n_conformers))
        whole = len(ref_set.templates) == 1 and len(gen_set.templates) == 1  # no scatter
        for ri, rows in enumerate(ref_set.index):
            for gi, cols in enumerate(gen_set.index):
                _group_block(ref_set, gen_set, ri, gi, max_matches, symmetrize, on_mismatch,
                             matrix, None if whole else rows, None if whole else cols, batch)
        out.append(matrix)
        pending += 1
        if batch.size >= _BATCH_ELEMENTS:
            batch.flush()
            if progress is not None:
                progress(pending)
            pending = 0
    batch.flush()
    if progress is not None and pending:
        progress(pending)
    return out


def _group_block(ref_set: ConformerSet, gen_set: ConformerSet, ri: int, gi: int,
                 max_matches: int, symmetrize: bool, on_mismatch: str, out: np.ndarray,
                 rows, cols, batch: _OverlapBatch) -> None:
    """Write the RMSD block of reference group ``ri`` x generated group ``gi`` into
    ``out[rows][:, cols]`` (all of ``out`` when rows is None) now, or at ``batch.flush()`` when
    the block is small; NaN if the graphs cannot match and ``on_mismatch="nan"``."""
    ref_template, gen_template = ref_set.templates[ri], gen_set.templates[gi]
    target = (slice(None), slice(None)) if rows is None else np.ix_(rows, cols)
    try:
        if ref_template.GetNumAtoms() != gen_template.GetNumAtoms():
            raise RMSDMatchError(f"reference has {ref_template.GetNumAtoms()} heavy atoms, "
                                 f"generated {gen_template.GetNumAtoms()}")
        maps = symmetry_matches(ref_template, gen_template, max_matches, symmetrize)
    except RMSDMatchError:
        if on_mismatch != "nan":
            raise
        out[target] = np.nan
        return
    ref_xyz, gen_xyz = ref_set.coords[ri], gen_set.coords[gi]
    if _OverlapBatch.fits(len(ref_xyz), len(gen_xyz), len(maps)):
        batch.add(ref_xyz, gen_xyz, maps, out, rows, cols)
    else:
        out[target] = kabsch_rmsd_min(ref_xyz, gen_xyz, maps)
