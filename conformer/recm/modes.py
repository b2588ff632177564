"""Per-mode behaviour of constraint modulation, in one place.

``RECMConfig.mode`` names one of the policies below; the layer, the controller and ``export``
ask the policy what to do instead of comparing mode strings. A policy is stateless: the
per-layer numbers live in ``RECMState`` and the knobs in ``RECMConfig``.

    mode           free branch  gamma                         signals  penalty        export
    equivariant    none         0                             -        -              -
    unconstrained  yes          1, fixed                      -        -              keeps
    scheduled      training     triangular 0 -> 1 -> 0        -        rel. defect    drops
    ace            yes          primal-dual, starts at 1      dJ/dg    -              |g| < trunc.
    recm           yes          recurrent update, gamma_init  b        optional       g == 0
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

import torch

if TYPE_CHECKING:  # import cycle: config validates the mode name against this module
    from conformer.recm.config import RECMConfig
    from conformer.recm.layer import RECMState

_TINY = 1e-12


class ModePolicy:
    """What a mode does; the defaults are those of a branch that is used as is.

    has_free_branch: the layer builds a free branch at all.
    branch_active_in_eval: the branch contributes outside training (``scheduled``: no).
    collects_signals: the backward hook records b and dJ/dgamma for ``update``.
    surrogate_branch_gradient: the branch's own parameters get the gradient as if gamma were
        1 while the trunk below gets the true one (see the package docstring, departure 2).
    """

    name: ClassVar[str]
    has_free_branch: ClassVar[bool] = True
    branch_active_in_eval: ClassVar[bool] = True
    collects_signals: ClassVar[bool] = False
    surrogate_branch_gradient: ClassVar[bool] = False

    def initial_gamma(self, config: RECMConfig) -> float:
        return 1.0

    def regularization_weight(self, config: RECMConfig) -> float:
        """Weight of the layers' penalty in the loss; 0 = no penalty is computed."""
        return 0.0

    def penalty(self, free_out: torch.Tensor, residual: torch.Tensor, gamma: torch.Tensor,
                scale: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """Scalar penalty of one layer from its raw branch output ``free_out`` [N, dim],
        its non-equivariant part ``residual`` [N, dim], ``gamma``, n(.)'s factor ``scale``
        and the layer's output [N, dim]. Only called when ``regularization_weight`` > 0."""
        raise NotImplementedError(f"mode {self.name!r} has no penalty")

    def update(self, state: RECMState, config: RECMConfig, progress: float,
               mean_b: float | None, mean_dgamma: float | None) -> None:
        """Advance a live (not dropped) layer's state by one optimiser step.

        progress: fraction of training done, in [0, 1]; mean_b / mean_dgamma: the step's
        mean signals (None when the step recorded none)."""

    def keeps_branch_at_export(self, gamma: float, config: RECMConfig) -> bool:
        """Whether ``export`` keeps a live (not dropped) branch with coefficient ``gamma``."""
        return True

    def log_values(self, state: RECMState, config: RECMConfig) -> dict[str, float]:
        """Mode-specific per-layer values for the loggers (names without the layer index)."""
        return {}


class Equivariant(ModePolicy):
    name = "equivariant"
    has_free_branch = False

    def initial_gamma(self, config: RECMConfig) -> float:
        return 0.0


class Unconstrained(ModePolicy):
    name = "unconstrained"


class Scheduled(ModePolicy):
    """Triangular 0 -> 1 -> 0 coefficient with a relative equivariance-defect penalty
    (recm.md section 2); the branch is off at test time and dropped at export."""

    name = "scheduled"
    branch_active_in_eval = False

    def initial_gamma(self, config: RECMConfig) -> float:
        return 0.0

    def regularization_weight(self, config: RECMConfig) -> float:
        return config.scheduled_reg_weight

    def penalty(self, free_out, residual, gamma, scale, output):
        # defect of the branch relative to the branch, so its scale is irrelevant
        return residual.pow(2).sum() / (free_out.pow(2).sum() + _TINY)

    def update(self, state, config, progress, mean_b, mean_dgamma):
        state.gamma.fill_(max(0.0, 1.0 - abs(2.0 * float(progress) - 1.0)))

    def keeps_branch_at_export(self, gamma, config):
        return False


class ACE(ModePolicy):
    """Primal-dual on the coefficient (``gamma -= eta_p (dJ/dgamma + lambda)``,
    ``lambda += eta_d gamma``); starts fully relaxed, truncated at export under
    ``ace_truncation`` since gamma only reaches zero asymptotically."""

    name = "ace"
    collects_signals = True

    def update(self, state, config, progress, mean_b, mean_dgamma):
        if mean_dgamma is None:
            return
        gamma = float(state.gamma) - config.ace_primal_lr * (mean_dgamma + float(state.dual))
        gamma = min(max(gamma, 0.0), config.gamma_max)
        state.gamma.fill_(gamma)
        state.dual += config.ace_dual_lr * gamma

    def keeps_branch_at_export(self, gamma, config):
        return abs(gamma) >= config.ace_truncation

    def log_values(self, state, config):
        return {"dual": float(state.dual)}


class RECM(ModePolicy):
    """The recurrent update of the package docstring, with the absorbing test."""

    name = "recm"
    collects_signals = True
    surrogate_branch_gradient = True

    def initial_gamma(self, config: RECMConfig) -> float:
        return config.gamma_init

    def regularization_weight(self, config: RECMConfig) -> float:
        return config.reg_weight

    def penalty(self, free_out, residual, gamma, scale, output):
        # section 4: gamma^2 ||r||^2 / ||y||^2, r in the layer's output scale
        return (gamma * scale).pow(2) * residual.pow(2).sum() / (
            output.detach().pow(2).sum() + _TINY)

    def update(self, state, config, progress, mean_b, mean_dgamma):
        if mean_b is None:
            return
        gamma = (1.0 - config.beta) * float(state.gamma) + config.beta * config.gamma_max * mean_b
        state.gamma.fill_(min(max(gamma, 0.0), config.gamma_max))
        # running moments of b: exact mean for the first `stats_window` steps, then exponential
        count = int(state.b_count) + 1
        weight = 1.0 / min(count, config.stats_window)
        state.b_mean.fill_((1 - weight) * float(state.b_mean) + weight * mean_b)
        state.b_sq_mean.fill_((1 - weight) * float(state.b_sq_mean) + weight * mean_b * mean_b)
        state.b_count.fill_(count)
        if absorbing_test_passes(state, config):
            state.patience += 1
        else:
            state.patience.zero_()
        if int(state.patience) >= config.patience:
            state.dropped.fill_(True)
            state.gamma.zero_()

    def keeps_branch_at_export(self, gamma, config):
        return gamma != 0.0

    def log_values(self, state, config):
        ucb = upper_confidence_fixed_point(state, config)
        return {"b_mean": float(state.b_mean),
                "fixed_point_ucb": ucb if math.isfinite(ucb) else -1.0}


def upper_confidence_fixed_point(state: RECMState, config: RECMConfig) -> float:
    """gamma_max * (mean(b) + z * standard error): an upper bound on the fixed point
    (inf before two signals)."""
    count = int(state.b_count)
    if count < 2:
        return math.inf
    variance = max(float(state.b_sq_mean) - float(state.b_mean) ** 2, 0.0)
    effective = min(count, config.stats_window)
    stderr = math.sqrt(variance / effective)
    return config.gamma_max * (float(state.b_mean) + config.confidence_z * stderr)


def absorbing_test_passes(state: RECMState, config: RECMConfig) -> bool:
    return (int(state.b_count) >= config.min_samples
            and float(state.gamma) < config.gamma_min
            and upper_confidence_fixed_point(state, config) < config.gamma_min)


POLICIES: dict[str, ModePolicy] = {policy.name: policy for policy in
                                   (Equivariant(), Unconstrained(), Scheduled(), ACE(), RECM())}
MODES = tuple(POLICIES)


def mode_policy(mode: str) -> ModePolicy:
    """The policy of ``mode``; ValueError naming the choices for an unknown one."""
    try:
        return POLICIES[mode]
    except KeyError:
        raise ValueError(f"unknown RECM mode {mode!r}; choose one of {', '.join(MODES)}") \
            from None
