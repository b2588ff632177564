"""COV and MAT (AMR) from a K x 2K RMSD matrix, as the field computes them.

With R[l, k] the RMSD between reference l and generated k (Angstrom) and threshold delta
(strict ``<``; 0.75 A for GEOM-Drugs, 0.5 A for QM9):

- COV-R = fraction of references l with min_k R[l, k] < delta;  MAT-R = mean_l min_k R[l, k]
- COV-P = fraction of generated k with min_l R[l, k] < delta;   MAT-P = mean_k min_l R[l, k]

A molecule with no generated conformer (an empty matrix) gets COV-R = COV-P = 0 and undefined
MAT (None): it counts in the COV means/medians, is left out of the MAT means/medians, and is
listed in the failures (setting ``empty_generation = "coverage 0, MAT excluded"``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

THRESHOLDS = {"drugs": 0.75, "qm9": 0.5}
EMPTY_GENERATION_POLICY = "coverage 0, MAT excluded from mean/median, molecule listed in failures"
CURVE_THRESHOLDS = np.round(np.arange(0.05, 3.0 + 1e-9, 0.05), 2)  # 0.05 .. 3.00 A


@dataclass
class MoleculeScores:
    """COV (fractions in [0, 1]) and MAT (Angstrom, None when undefined) of one molecule."""

    name: str
    n_ref: int
    n_gen: int
    cov_r: float
    mat_r: float | None
    cov_p: float
    mat_p: float | None

    def as_dict(self) -> dict:
        return asdict(self)


def molecule_scores(name: str, rmsd: np.ndarray, threshold: float) -> MoleculeScores:
    """Scores of one molecule from its (K, G) RMSD matrix; G = 0 means nothing was generated."""
    rmsd = np.asarray(rmsd, dtype=np.float64)
    if rmsd.ndim != 2 or rmsd.shape[0] == 0:
        raise ValueError(f"{name}: RMSD matrix must be (K>0, G), got {rmsd.shape}")
    n_ref, n_gen = rmsd.shape
    if n_gen == 0:
        return MoleculeScores(name, n_ref, 0, 0.0, None, 0.0, None)
    min_over_gen = rmsd.min(axis=1)  # (K,)
    min_over_ref = rmsd.min(axis=0)  # (G,)
    return MoleculeScores(
        name=name, n_ref=n_ref, n_gen=n_gen,
        cov_r=float((min_over_gen < threshold).mean()), mat_r=float(min_over_gen.mean()),
        cov_p=float((min_over_ref < threshold).mean()), mat_p=float(min_over_ref.mean()),
    )


def coverage_curves(matrices: dict[str, np.ndarray],
                    thresholds: np.ndarray = CURVE_THRESHOLDS) -> dict[str, list[float]]:
    """Mean and median COV-R / COV-P over molecules at each threshold (empty -> 0)."""
    cov_r = np.zeros((len(matrices), len(thresholds)))
    cov_p = np.zeros_like(cov_r)
    for row, rmsd in enumerate(matrices.values()):
        rmsd = np.asarray(rmsd, dtype=np.float64)
        if rmsd.shape[1] == 0:
            continue
        cov_r[row] = (rmsd.min(axis=1)[:, None] < thresholds[None, :]).mean(axis=0)
        cov_p[row] = (rmsd.min(axis=0)[:, None] < thresholds[None, :]).mean(axis=0)
    empty = len(matrices) == 0
    return {
        "threshold": [float(t) for t in thresholds],
        "cov_r_mean": [] if empty else cov_r.mean(axis=0).tolist(),
        "cov_r_median": [] if empty else np.median(cov_r, axis=0).tolist(),
        "cov_p_mean": [] if empty else cov_p.mean(axis=0).tolist(),
        "cov_p_median": [] if empty else np.median(cov_p, axis=0).tolist(),
    }


def _mean_median(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return float(np.mean(values)), float(np.median(values))


def aggregate(scores: list[MoleculeScores], threshold: float) -> dict:
    """Mean and median over molecules of COV-R/P (all molecules) and MAT-R/P (defined ones)."""
    out: dict = {"threshold": threshold, "n_molecules": len(scores),
                 "n_empty_generation": sum(s.n_gen == 0 for s in scores)}
    for key in ("cov_r", "cov_p"):
        out[f"{key}_mean"], out[f"{key}_median"] = _mean_median([getattr(s, key) for s in scores])
    for key in ("mat_r", "mat_p"):
        values = [getattr(s, key) for s in scores if getattr(s, key) is not None]
        out[f"{key}_mean"], out[f"{key}_median"] = _mean_median(values)
    return out


def format_table(metrics: dict, title: str = "") -> str:
    """The metrics as the field's markdown table row (COV in %, MAT in Angstrom)."""

    def pct(x):
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"

    def ang(x):
        return "-" if x is None else f"{x:.3f}"

    lines = []
    if title:
        lines += [f"## {title}", ""]
    lines += [
        f"threshold {metrics['threshold']} A (strict <); {metrics['n_molecules']} molecules, "
        f"{metrics['n_empty_generation']} with no generated conformer (coverage 0)",
        "",
        "| COV-R mean/med % | MAT-R mean/med A | COV-P mean/med % | MAT-P mean/med A |",
        "|---|---|---|---|",
        f"| {pct(metrics['cov_r_mean'])} / {pct(metrics['cov_r_median'])} "
        f"| {ang(metrics['mat_r_mean'])} / {ang(metrics['mat_r_median'])} "
        f"| {pct(metrics['cov_p_mean'])} / {pct(metrics['cov_p_median'])} "
        f"| {ang(metrics['mat_p_mean'])} / {ang(metrics['mat_p_median'])} |",
        "",
    ]
    return "\n".join(lines)
