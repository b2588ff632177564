"""Settings of constraint modulation: one dataclass, one ``mode`` switch (its behaviour:
``conformer.recm.modes``)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist

from conformer.recm.modes import ModePolicy, mode_policy

FITTED_GAP_MARGIN = 0.01
"""The margin for b scored on molecules the branches have fitted: above the bias measured on
N-body at eps = 0 (+0.009), at a fixed point gamma_max * 0.01 = 0.04 of the layer's output."""


_CHOICES = {
    "reflection_inputs": ("all", "pseudo"),
    "heldout_point": ("equivariant", "current"),
    "gamma_gate": ("significant", "always"),
    "reflection_score": ("span", "support"),
    "b_weighting": ("magnitude", "molecule"),
    "absorb_rule": ("not-significant", "shown-small"),
}
"""The string settings of ``RECMConfig`` and the values each accepts."""


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
    gap_margin: the b a branch must significantly exceed to be kept; None (default): 0 when b
        is scored on held-out molecules (unbiased, so the significance test alone decides),
        ``FITTED_GAP_MARGIN`` (0.01) when it is scored on molecules the branches train on (no
        hold-out keys given, or ``heldout_every`` 0). b measured on a finite training set that
        the branch has fitted is biased upwards even when the population is exactly
        symmetric (N-body, eps = 0: +0.009 at t = 8.7 against 0); that margin keeps the bias
        from counting as a gap, at the price of absorbing real gaps under it.
    heldout_every: every k-th training molecule (``key % k == 0`` for the keys a training loop
        passes to ``RECMController.hold_out``) is held out of every branch's gradient, and b is
        scored on those molecules only (``recm`` mode). 0: b on every molecule of the batch
        (v2 behaviour). The trunk still trains on held-out molecules. Default 4: a quarter of
        the molecules buys an unbiased b; the branches train on the other three quarters.
    heldout_point: where the absorbing test is scored. ``equivariant`` (default, session
        13): every other held-out molecule (``key // heldout_every`` even) is a probe that
        sees no branch at all (every branch's value is 0 on its rows), so its b is the loss's
        derivative along each branch at the equivariant point, ``gamma = 0``; the absorbing
        test uses the probes alone, and the gamma update the other held-out molecules, which
        see every branch at the current gamma. ``current``: every held-out molecule sees the
        branches at the current gamma and both the test and the update use its b (sessions
        9-12). Why: at gamma > 0 the loss's derivative along a useful branch falls as the
        branch and gamma approach their optimum (the update's fixed point has
        ``E[b] = gamma / gamma_max``), so a real gap kept at a small gamma tested as no gap
        and was absorbed, or not, depending on the length of training
        (docs/results/chirality_tiny.md, sessions 12 and 13). On a probe the network is
        exactly O(3)-equivariant: under exact symmetry E[b] = 0 for any parameters, and with
        a gap b grows as the branch learns to fill it. (The update cannot use the training
        molecules instead: the branches, fitted to them, leave little of their gradient to
        follow, and gamma stayed near 0.03.)
    gamma_gate: when gamma follows b. ``always`` (default): every step. ``significant``
        (experimental, session 13): only while the absorbing test shows a gap (its t on the
        held-out molecules above the test's normal quantile); otherwise the update pulls
        gamma towards 0, so a branch with no shown gap adds nothing to the network while the
        test gathers evidence (its weights still learn through the surrogate gradient).
        Measured on the chirality preset (docs/results/chirality_tiny.md, session 13): null
        branches then stayed at gamma ~0.002 instead of 0.05-0.2, but stereo did not improve
        (recm/0e 0.935 / 0.857, recm/0o 0.929 / 0.875 on seeds 0 / 1), and with the branches
        clipped apart a rotation branch whose t drifted to 2.6-3.0 late in training was
        opened and kept. Not gated when b is scored on training molecules.
    score_on_support: b is the cosine over the output channels each branch can write (its
        support, derived from the irreps: for the reflection branch the output irreps whose
        flipped parity some input irrep has), not over every channel of the layer. True by
        default: it removes the sqrt(support / dim) dilution and keeps E[b] = 0 under symmetry.
    support_atoms: also restrict each molecule's b to the rows (atoms) where the branch's
        residual is non-zero. Off by default: the even atom embedding feeds every atom's
        residual at layer 0, so there it changes nothing.
    reflection_inputs: what the reflection branch reads: ``all`` of the layer's input, or
        only its ``pseudo`` irreps (0o, 1e, ...: p = -(-1)^l). A reflection-odd map of an
        even input (e.g. the even atom embedding to a pseudoscalar) is non-zero on every
        atom, so b is diluted over all of them; from pseudo inputs that only some atoms carry
        (``DenoiserConfig.chirality_features`` with the label as 0e) the residual lives on
        those atoms, and with ``support_atoms`` b is scored there.
    reflection_score: how the reflection branch's b is normalised. ``span`` (default): by
        the part of the descent direction the branch could follow with some choice of its
        weights (``ReflectionBranch.followable_sq``): b = 1 when the branch points exactly
        where the loss wants it within what it can write. ``support``: by the descent
        direction over the channels it can write (sessions 6-11); the denoising noise in every
        atom's gradient dilutes that cosine to about 0.01 even for a useful branch, so the
        fixed point ``gamma_max E[b]`` stayed near 0 on conformers. Both have mean 0 under
        exact symmetry (see the package docstring).
    b_weighting: how the per-molecule b's of a step and of the absorbing test are averaged.
        ``magnitude`` (default): weighted by each molecule's denominator (``|grad| |r|``), so
        the mean is the ratio ``-sum <grad, r> / sum |grad| |r|``, the batch cosine of v1
        with per-molecule evidence: a molecule whose loss barely moves with the branch counts
        little. ``molecule``: every molecule alike (sessions 6-11). On the chirality
        experiment the two disagreed in sign: many molecules at low noise where the branch
        slightly overshoots (small negative cosines, small gradients) outvoted the few at
        high noise where it removes most of the loss (docs/results/chirality_tiny.md,
        session 12). Both have mean 0 under exact symmetry: a mirror pair has equal weights
        and opposite b.
    absorb_rule: when a branch counts as having no gap. ``not-significant`` (default): the
        test of ``E[b] > margin`` does not reject. ``shown-small`` (experimental, session 12):
        the upper confidence bound ``mean + z stderr`` is below ``equivalence_margin``, so a
        branch whose gap is uncertain is kept rather than absorbed. Why it exists: with the
        default, the chirality experiment's kept reflection gaps (held-out b ~ 0.02-0.1 on
        64 molecules) were absorbed or not depending on the length of training, because the
        test runs every step against a standard error that more steps do not shrink
        (docs/results/chirality_tiny.md, session 12). Its cost: a zero gap measured on too
        few held-out molecules is never absorbed, and the export is then not equivariant.
    equivalence_margin: the gap under which ``shown-small`` absorbs (in units of b).
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
    gap_margin: float | None = None
    heldout_every: int = 4
    heldout_point: str = "equivariant"
    gamma_gate: str = "always"
    score_on_support: bool = True
    support_atoms: bool = False
    reflection_inputs: str = "all"
    reflection_score: str = "span"
    b_weighting: str = "magnitude"
    absorb_rule: str = "not-significant"
    equivalence_margin: float = 0.02
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
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be {' or '.join(choices)}, got "
                                 f"{getattr(self, name)!r}")
        if not (math.isfinite(self.equivalence_margin) and self.equivalence_margin > 0):
            raise ValueError(f"equivalence_margin must be a finite number > 0, got "
                             f"{self.equivalence_margin}")
        if not 0.0 < self.beta <= 1.0:
            raise ValueError(f"beta must be in (0, 1], got {self.beta}")
        if self.gamma_max <= 0:
            raise ValueError(f"gamma_max must be positive, got {self.gamma_max}")
        if not 0.0 < self.significance_level < 0.5:
            raise ValueError(f"significance_level must be in (0, 0.5), got "
                             f"{self.significance_level}")
        if self.absorb_after_steps < 0:
            raise ValueError(f"absorb_after_steps must be >= 0, got {self.absorb_after_steps}")
        if self.gap_margin is not None and not (math.isfinite(self.gap_margin)
                                                and self.gap_margin >= 0):
            raise ValueError(f"gap_margin must be None or a finite number >= 0, got "
                             f"{self.gap_margin}")
        if self.heldout_every < 0 or self.heldout_every == 1:
            raise ValueError(f"heldout_every must be 0 (off) or >= 2 (1 would hold every "
                             f"molecule out of the branches), got {self.heldout_every}")

    def margin(self, heldout: bool) -> float:
        """The margin of the absorbing test for b scored on held-out molecules (``heldout``)
        or on molecules the branches train on (see ``gap_margin``)."""
        if self.gap_margin is not None:
            return float(self.gap_margin)
        return 0.0 if heldout else FITTED_GAP_MARGIN

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
