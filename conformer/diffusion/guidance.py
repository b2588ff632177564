"""Stereo guidance: steer the sampler's denoised estimates towards the input's stereochemistry.

Why: the denoiser is reflection-equivariant (E(3)), so it cannot tell a centre from its mirror
image; on its own each tetrahedral centre comes out right about half the time, and resampling
cannot reach every centre right for molecules with many of them. Guidance adds what the network
cannot know: at every sampler step with sigma <= ``sigma_start`` the denoised estimate D(x; sigma)
[N, 3] is moved by a few gradient steps on a hinge penalty that is zero once every specified
centre and double bond has the wanted sign, so correct estimates are left exactly as they are.
After each gradient step, a few relaxation sweeps move bonds back to their lengths before
guidance (``GuidanceSettings.length_iterations``): turning a substituent across a centre must
not stretch its bonds, which cost about 1.3 points of bonds within 0.1 A of MMFF before.

Quantities (positions in Angstrom; everything here is dimensionless, so margins do not depend on
bond lengths or on how compact an early estimate is):

- tetrahedral centre o with its first three neighbours a, b, c in RDKit bond order (hydrogens
  explicit, so a centre has 4 neighbours, or 3 for e.g. a sulfoxide S or a phosphine P): the
  normalised signed volume v = u_a . (u_b x u_c), u_i = (i - o) / |i - o|. v > 0 exactly when
  RDKit's tag is CCW (checked against RDKit embeddings in tests/test_stereo.py); an ideal sp3
  centre has |v| = 0.77. Penalty: relu(volume_margin - s v), s = +1 (CCW) or -1 (CW).
- double bond b=c with stereo atoms a (on b) and d (on c), and the other substituents a' of b
  and d' of c where they exist: the dihedral phi (radians) of the virtual points
  b + (a - a'), b, c, c + (d - d') (a' = b, d' = c where there is none). a - a' points to a's
  side of the bond even when the sp2 atom is bent, and its gradient turns a and a' together,
  so both substituents end on their own sides (one term per stereo atom pair pulled a and a'
  into each other, and stalled, on planar estimates). |phi| < pi/2 for cis,
  > pi/2 for trans. Penalty:
  relu(dihedral_margin - s (pi/2 - |phi|)), s = +1 (cis) or -1 (trans). The angle, not its
  cosine, because the cosine's gradient vanishes at the planar cis and trans geometries the
  network produces, so a wrong but planar double bond would never turn.

The penalty is invariant to translations and rotations, so its gradient moves no centroid
and commutes with rotations of the molecule; it is *not* invariant to reflections, on purpose.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

_EPS = 1e-6  # Angstrom: keeps unit vectors finite when an early estimate puts atoms together


@dataclass(frozen=True)
class GuidanceSettings:
    """sigma_start: guidance acts on estimates at noise levels <= this (Angstrom).
    volume_margin: wanted |normalised signed volume| (ideal sp3: 0.77).
    dihedral_margin: wanted distance (radians) of an E/Z bond's stereo dihedral from 90 degrees.
    step_size: gradient step on the penalty (Angstrom^2, the penalty being dimensionless).
    max_iterations: gradient steps per estimate at most (stops as soon as the penalty is 0).
    length_iterations: after every gradient step, this many relaxation sweeps move each bond of
    the targets' ``covalent`` back towards its length in the estimate before guidance (0 =
    off). Guidance is there to turn substituents, not to stretch bonds: a step across a centre
    moves atoms perpendicular to their bonds, which lengthens them to second order."""

    sigma_start: float = 5.0
    sigma_stop: float = 0.0
    volume_margin: float = 0.3
    dihedral_margin: float = 0.5
    step_size: float = 0.1
    max_iterations: int = 20
    length_iterations: int = 5

    def __post_init__(self) -> None:
        if self.sigma_start <= 0 or self.step_size <= 0 or self.max_iterations < 1:
            raise ValueError("need sigma_start > 0, step_size > 0 and max_iterations >= 1")
        if not (0 <= self.volume_margin < 1 and 0 <= self.dihedral_margin < 1.5):
            raise ValueError("need 0 <= volume_margin < 1 and 0 <= dihedral_margin < 1.5")


@dataclass(frozen=True)
class StereoTargets:
    """The stereo a molecule must have, as atom indices into its [N, 3] positions.

    centres [K, 4] int64: centre atom, then its first three neighbours in RDKit bond order;
    centre_signs [K] float: wanted sign of the normalised signed volume (+1 CCW, -1 CW);
    bonds [M, 6] int64: a, a', b, c, d, d' -- stereo atom a on the bond's begin atom b, the
    other substituent a' of b (b itself if none), end atom c, stereo atom d on c, other
    substituent d' of c (c itself if none);
    bond_signs [M] float: +1 when a and d are cis, -1 when trans;
    covalent [B, 2] int64: bonds whose lengths guidance keeps (``StereoChecker.targets`` gives
    the bonds of the tetrahedral centres).
    """

    centres: np.ndarray
    centre_signs: np.ndarray
    bonds: np.ndarray
    bond_signs: np.ndarray
    covalent: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.int64))

    @classmethod
    def build(cls, centres, centre_signs, bonds, bond_signs, covalent=()) -> StereoTargets:
        return cls(np.asarray(centres, dtype=np.int64).reshape(-1, 4),
                   np.asarray(centre_signs, dtype=np.float64).reshape(-1),
                   np.asarray(bonds, dtype=np.int64).reshape(-1, 6),
                   np.asarray(bond_signs, dtype=np.float64).reshape(-1),
                   np.asarray(covalent, dtype=np.int64).reshape(-1, 2))

    @property
    def empty(self) -> bool:
        return len(self.centres) == 0 and len(self.bonds) == 0

    def tile(self, copies: int, num_atoms: int) -> StereoTargets:
        """Targets for ``copies`` concatenated copies of the molecule (``num_atoms`` each), the
        layout of a sampling batch of one molecule."""
        offsets = np.arange(copies, dtype=np.int64) * num_atoms

        def shifted(index):
            return (index[None, :, :] + offsets[:, None, None]).reshape(-1, index.shape[1])

        return StereoTargets(shifted(self.centres), np.tile(self.centre_signs, copies),
                             shifted(self.bonds), np.tile(self.bond_signs, copies),
                             shifted(self.covalent))


def signed_volumes(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Normalised signed volumes [K] of ``centres`` [K, 4] (o, a, b, c) in positions x [N, 3]."""
    o = x[centres[:, 0]]
    units = [_unit(x[centres[:, j]] - o) for j in (1, 2, 3)]
    return (units[0] * torch.cross(units[1], units[2], dim=1)).sum(dim=1)


def double_bond_dihedrals(x: torch.Tensor, bonds: torch.Tensor) -> torch.Tensor:
    """Dihedrals [M] (radians) of b + (a - a'), b, c, c + (d - d') for ``bonds`` [M, 6]
    (a, a', b, c, d, d') in positions x [N, 3]; |value| < pi/2 means a and d are cis."""
    b, c = x[bonds[:, 2]], x[bonds[:, 3]]
    a = b + x[bonds[:, 0]] - x[bonds[:, 1]]
    d = c + x[bonds[:, 4]] - x[bonds[:, 5]]
    return dihedrals(torch.stack([a, b, c, d], dim=1))


def dihedrals(points: torch.Tensor) -> torch.Tensor:
    """Dihedral angles [M] (radians, in [-pi, pi]) of ``points`` [M, 4, 3] (a, b, c, d)."""
    a, b, c, d = points.unbind(dim=1)
    axis = _unit(c - b)
    normal_1 = torch.cross(b - a, axis, dim=1)
    normal_2 = torch.cross(axis, d - c, dim=1)
    cosine_part = (normal_1 * normal_2).sum(dim=1)
    sine_part = (torch.cross(normal_1, normal_2, dim=1) * axis).sum(dim=1)
    return torch.atan2(sine_part, cosine_part)


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / (v.norm(dim=1, keepdim=True) + _EPS)


class StereoGuidance:
    """``guidance(denoised [N, 3], sigma) -> [N, 3]`` for ``EDMDiffusion.sample``.

    ``targets`` index the sampler's concatenated positions (use ``StereoTargets.tile``).
    ``calls`` and ``adjusted`` count estimates seen and estimates changed (for reports).
    """

    def __init__(self, targets: StereoTargets, settings: GuidanceSettings | None = None,
                 device=None):
        self.settings = settings or GuidanceSettings()
        self.centres = torch.as_tensor(targets.centres, device=device)
        self.centre_signs = torch.as_tensor(targets.centre_signs, device=device)
        self.bonds = torch.as_tensor(targets.bonds, device=device)
        self.bond_signs = torch.as_tensor(targets.bond_signs, device=device)
        self.covalent = torch.as_tensor(targets.covalent, device=device)
        self.empty = targets.empty
        self.calls = 0
        self.adjusted = 0

    def violations(self, x: torch.Tensor) -> torch.Tensor:
        """Hinge penalties [K + M] of every centre then every double bond (0: satisfied)."""
        s = self.settings
        volumes = signed_volumes(x, self.centres)
        cis_ness = torch.pi / 2 - double_bond_dihedrals(x, self.bonds).abs()  # > 0: cis
        return torch.cat([
            torch.relu(s.volume_margin - self.centre_signs.to(x.dtype) * volumes),
            torch.relu(s.dihedral_margin - self.bond_signs.to(x.dtype) * cis_ness)])

    def __call__(self, denoised: torch.Tensor, sigma: float) -> torch.Tensor:
        self.calls += 1
        s = self.settings
        if self.empty or sigma > s.sigma_start or sigma <= s.sigma_stop:
            return denoised
        # float64: the hinge decides signs of small volumes of early, compact estimates
        x = denoised.detach().to(torch.float64)
        lengths = None
        if s.length_iterations and len(self.covalent):
            lengths = self._lengths(x)
        changed = False
        for _ in range(s.max_iterations):
            with torch.enable_grad():
                x.requires_grad_(True)
                penalty = self.violations(x).sum()
                if float(penalty.detach()) == 0.0:
                    break
                (gradient,) = torch.autograd.grad(penalty, x)
            x = (x - s.step_size * gradient).detach()
            if lengths is not None:
                x = self.restore_lengths(x, lengths, s.length_iterations)
            changed = True
        if not changed:
            return denoised
        self.adjusted += 1
        return x.detach().to(denoised.dtype)


    def _lengths(self, x: torch.Tensor) -> torch.Tensor:
        return (x[self.covalent[:, 0]] - x[self.covalent[:, 1]]).norm(dim=1)

    def restore_lengths(self, x: torch.Tensor, lengths: torch.Tensor,
                        iterations: int) -> torch.Tensor:
        """Move the two atoms of every bond in ``covalent`` along it towards length
        ``lengths`` [B] (Angstrom): Jacobi sweeps in which each bond corrects half its error at
        each end, damped by the larger degree of its two atoms (bonds sharing an atom would
        otherwise overshoot). Equal and opposite moves along bonds: the centroid stays put, and
        the result commutes with rotations and translations. x [N, 3] -> [N, 3]."""
        i, j = self.covalent[:, 0], self.covalent[:, 1]
        degree = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        degree.index_add_(0, i, torch.ones_like(lengths))
        degree.index_add_(0, j, torch.ones_like(lengths))
        damping = (0.5 / torch.maximum(degree[i], degree[j])).unsqueeze(1)
        for _ in range(iterations):
            vector = x[j] - x[i]
            current = vector.norm(dim=1, keepdim=True).clamp(min=_EPS)
            correction = damping * (current - lengths.unsqueeze(1)) / current * vector
            shift = torch.zeros_like(x)
            shift.index_add_(0, i, correction)
            shift.index_add_(0, j, -correction)
            x = x + shift
        return x


__all__ = ["GuidanceSettings", "StereoGuidance", "StereoTargets", "dihedrals",
           "double_bond_dihedrals", "signed_volumes"]
