"""Settings of constraint modulation: one dataclass, one ``mode`` switch (its behaviour:
``conformer.recm.modes``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from statistics import NormalDist

from conformer.recm.modes import ModePolicy, mode_policy


@dataclass(frozen=True)
class RECMConfig:
    """Every knob of the modulated layers; the same defaults serve every task.

    mode: ``equivariant`` (no free branch), ``unconstrained`` (free branch, coefficient 1),
        ``scheduled`` (triangular 0 -> 1 -> 0 coefficient + defect penalty; branch dropped at
        test/export), ``ace`` (primal-dual on the coefficient; truncated at export) or ``recm``.
    gamma_init: starting value of gamma in ``recm`` mode (0: see the package docstring;
        ``ace`` always starts at 1, ``unconstrained`` is fixed at 1).
    gamma_max: cap of the recurrent state (headroom above 1, see docs/design/recm.md section 2).
    beta: step of the recurrent update ``gamma <- (1-beta) gamma + beta gamma_max b``.
    absorb_after_steps: no branch is absorbed before this many optimiser steps (b of a young
        branch says little; a small real gap needs thousands of molecules to show).
    significance_level: level alpha of the one-sided test "E[b] > gap_margin" on the running
        mean of per-molecule b; a branch whose gap is not significant at this level for
        ``patience`` consecutive steps is frozen at zero (see the package docstring).
    gap_margin: the b a branch must significantly exceed to be kept. b measured on a finite
        training set that the branch has fitted is biased upwards even when the population
        is exactly symmetric (N-body, eps = 0: +0.009 at t = 8.7 against 0); the margin keeps
        that bias from counting as a gap. Fixed point at the margin: gamma_max * 0.01 = 0.04.
    stats_window: effective window (steps) of the running mean / variance of ``b``.
    min_samples: molecules of evidence needed before a branch can be absorbed.
    patience: consecutive steps the test must find no gap.
    gamma_min, confidence_z: the upper confidence bound of the fixed point reported in the
        logs (``gamma_max (mean + confidence_z stderr)``); gamma_min no longer decides
        anything (the v1 absorbing threshold; kept so files that set it still load).
    num_group_samples: random O(3) elements per step in the Haar projection estimate.
    free_hidden, free_layers, free_init_std: the free branch's GELU MLP.
    reg_weight: weight of the regulariser (``recm``: optional, 0 = off; ``scheduled``: the
        equivariance-defect penalty of section 2 uses ``scheduled_reg_weight``).
    ace_primal_lr, ace_dual_lr, ace_truncation: ACE's primal-dual steps and the |gamma| under
        which export truncates the branch.
    seed: base seed of the group elements drawn for the projection (deterministic per step,
        so a resumed run draws the same elements as an uninterrupted one).
    """

    mode: str = "recm"
    gamma_init: float = 0.0
    gamma_max: float = 4.0
    beta: float = 0.01
    gamma_min: float = 0.05
    confidence_z: float = 2.0
    stats_window: int = 1000
    min_samples: int = 200
    patience: int = 100
    absorb_after_steps: int = 2000
    significance_level: float = 0.01
    gap_margin: float = 0.01
    num_group_samples: int = 2
    free_hidden: int = 64
    free_layers: int = 2
    free_init_std: float = 1e-3
    reg_weight: float = 0.0
    scheduled_reg_weight: float = 0.01
    ace_primal_lr: float = 0.01
    ace_dual_lr: float = 0.01
    ace_truncation: float = 0.05
    seed: int = 12345

    def __post_init__(self) -> None:
        mode_policy(self.mode)  # ValueError naming the choices
        if not 0.0 < self.beta <= 1.0:
            raise ValueError(f"beta must be in (0, 1], got {self.beta}")
        if self.gamma_max <= 0:
            raise ValueError(f"gamma_max must be positive, got {self.gamma_max}")
        if not 0.0 < self.significance_level < 0.5:
            raise ValueError(f"significance_level must be in (0, 0.5), got "
                             f"{self.significance_level}")
        if self.absorb_after_steps < 0:
            raise ValueError(f"absorb_after_steps must be >= 0, got {self.absorb_after_steps}")

    @property
    def significance_z(self) -> float:
        """The one-sided normal quantile of ``significance_level`` (2.33 at 0.01)."""
        return NormalDist().inv_cdf(1.0 - self.significance_level)

    @property
    def policy(self) -> ModePolicy:
        """What ``mode`` does (``conformer.recm.modes``)."""
        return mode_policy(self.mode)

    def to_dict(self) -> dict:
        return asdict(self)
