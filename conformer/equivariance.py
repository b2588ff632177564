"""O(3) + translation equivariance checks (float64), used by the tests and by experiments
that report how equivariant a trained model is.

Usage: ``max_equivariance_error(fn, inputs, irreps_out)`` where ``inputs`` maps argument
names to ``(tensor, kind)``; kind is an ``e3nn.o3.Irreps`` (features rotated by its Wigner-D),
``"position"`` (rotated and translated) or ``None`` (invariant, passed unchanged).
"""

from __future__ import annotations

import torch
from e3nn import o3

from conformer.recm.haar import random_orthogonal, wigner_d

POSITION = "position"


def transformed(inputs: dict, rotation: torch.Tensor, translation: torch.Tensor) -> dict:
    out = {}
    for name, (value, kind) in inputs.items():
        if kind is None:
            out[name] = value
        elif kind == POSITION:
            out[name] = value @ rotation.T + translation
        else:
            out[name] = value @ wigner_d(kind, rotation).T
    return out


def max_equivariance_error(fn, inputs: dict, irreps_out, *, trials: int = 3, seed: int = 0,
                           reflections: bool = True, translate: bool = True,
                           dtype=torch.float64) -> float:
    """Largest |fn(g x) - rho_out(g) fn(x)| over ``trials`` random g (with reflections when
    ``reflections``; the first trial's g always includes one) and random translations."""
    generator = torch.Generator().manual_seed(seed)
    plain = fn(**{name: value for name, (value, _) in inputs.items()}).detach()
    d_out_irreps = o3.Irreps(irreps_out)
    worst = 0.0
    for trial in range(trials):
        rotation = random_orthogonal(generator, dtype, reflections=reflections)
        if reflections and trial == 0 and torch.det(rotation) > 0:
            rotation = -rotation
        translation = (torch.randn(3, generator=generator, dtype=dtype) * 3.0
                       if translate else torch.zeros(3, dtype=dtype))
        moved = fn(**transformed(inputs, rotation, translation)).detach()
        expected = plain @ wigner_d(d_out_irreps, rotation).T
        worst = max(worst, float((moved - expected).abs().max()))
    return worst


def output_scale(fn, inputs: dict) -> float:
    """Largest |fn(x)|, to make error tolerances relative."""
    return float(fn(**{name: value for name, (value, _) in inputs.items()}).abs().max())


__all__ = ["POSITION", "max_equivariance_error", "output_scale", "transformed"]
