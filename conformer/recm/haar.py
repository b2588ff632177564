"""Random elements of O(3) and their Wigner-D matrices (row-vector convention ``x @ D.T``)."""

from __future__ import annotations

import torch
from e3nn import o3


def random_orthogonal(generator: torch.Generator, dtype=torch.float64,
                      reflections: bool = True) -> torch.Tensor:
    """A Haar-random 3x3 matrix of O(3) (SO(3) if ``reflections`` is False), shape [3, 3]."""
    gaussian = torch.randn(3, 3, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    # sign fix makes Q Haar-distributed (QR alone is biased by the sign convention)
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
    if torch.det(q) < 0:
        q = -q
    if reflections and torch.rand((), generator=generator).item() < 0.5:
        q = -q
    return q.to(dtype)


def _wigner_d_l(degree: int, proper: torch.Tensor) -> torch.Tensor:
    """D^l of a proper rotation, [2l+1, 2l+1], to float64 round-off for l <= 2.

    e3nn's ``D_from_matrix`` goes through Euler angles and loses ~1e-7, too much for float64
    equivariance tests; for l <= 2 we build D^l from the matrix itself (l = 1 is the matrix in
    e3nn's x, y, z order; l = 2 is R (x) R seen through the Clebsch-Gordan map 1 x 1 -> 2).
    """
    if degree == 0:
        return torch.ones(1, 1, dtype=proper.dtype, device=proper.device)
    if degree == 1:
        return proper
    if degree == 2:
        cg = o3.wigner_3j(1, 1, 2, dtype=proper.dtype, device=proper.device)  # [3, 3, 5]
        norm = torch.einsum("ijk,ijk->k", cg, cg)
        return torch.einsum("ijk,ia,jb,abm->km", cg, proper, proper, cg) / norm[:, None]
    angles = o3.matrix_to_angles(proper)
    return o3.wigner_D(degree, *angles)


def wigner_d(irreps, rotation: torch.Tensor) -> torch.Tensor:
    """Representation matrix of ``rotation`` (det +-1) on ``irreps``: [dim, dim]; a row
    vector of features ``x`` [.., dim] transforms as ``x @ D.T``."""
    det = torch.det(rotation)
    proper = rotation * det
    reflected = bool(det < 0)
    blocks = []
    for mul, ir in o3.Irreps(irreps):
        block = _wigner_d_l(ir.l, proper) * (ir.p if reflected else 1)
        blocks += [block] * mul
    if not blocks:
        return rotation.new_zeros(0, 0)
    return torch.block_diag(*blocks)
