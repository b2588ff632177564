"""Symmetry-aware heavy-atom RMSD matrices, equal to ``rdMolAlign.GetBestRMS(ref, gen)``.

Three parts: :mod:`~conformer.evaluate.rmsd.symmetry` (the atom maps GetBestRMS enumerates,
conformers grouped by graph), :mod:`~conformer.evaluate.rmsd.kernel` (the closed-form
alignment of every pair x map at once; :func:`rmsd_matrix` for one molecule) and
:mod:`~conformer.evaluate.rmsd.pool` (many molecules in forked workers). Every public name is
importable from here.
"""

from conformer.evaluate.rmsd.kernel import (
    kabsch_rmsd_min,
    max_rotation_overlap,
    overlap_from_entries,
    rmsd_matrix,
)
from conformer.evaluate.rmsd.pool import ForkedRMSDPool, rmsd_matrices
from conformer.evaluate.rmsd.symmetry import (
    DEFAULT_MAX_MATCHES,
    ConformerArray,
    RMSDMatchError,
    get_best_rms_reference,
    heavy_atom_copy,
    symmetrize_terminal_groups,
    symmetry_matches,
)

__all__ = ["DEFAULT_MAX_MATCHES", "ConformerArray", "ForkedRMSDPool", "RMSDMatchError", "get_best_rms_reference",
           "heavy_atom_copy", "kabsch_rmsd_min", "max_rotation_overlap", "overlap_from_entries",
           "rmsd_matrices", "rmsd_matrix", "symmetrize_terminal_groups", "symmetry_matches"]
