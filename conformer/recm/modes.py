"""Per-mode behaviour of constraint modulation, in one place.

``RECMConfig.mode`` names one of the policies below; the layer, the controller and ``export``
ask the policy what to do instead of comparing mode strings. A policy is stateless: the
per-layer numbers live in ``RECMState`` and the knobs in ``RECMConfig``.

    mode           free branch  gamma                         signals  penalty        export
    equivariant    none         0                             -        -              -
    unconstrained  yes          1, fixed                      -        -              keeps
    scheduled      training     triangular 0 -> 1 -> 0        -        rel. defect    drops
    ace            yes          primal-dual, starts at 1      dJ/dg    -              |g| < trunc.
    recm           rotation +   recurrent update, gamma_init  b per    optional       g == 0
                   reflection   (one gamma per branch)        molecule
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

import torch

if TYPE_CHECKING:  # import cycle: config validates the mode name against this module
    from conformer.recm.config import RECMConfig
    from conformer.recm.layer import RECMState, SignalSummary

_TINY = 1e-12


class ModePolicy:
    """What a mode does; the defaults are those of a branch that is used as is.

    has_free_branch: the layer builds a free branch at all.
    branch_active_in_eval: the branch contributes outside training (``scheduled``: no).
    collects_signals: the backward hook records b and dJ/dgamma for ``update``.
    surrogate_branch_gradient: the branch's own parameters get the gradient as if gamma were
        1 while the trunk below gets the true one (see the package docstring, departure 2).
    subgroup_branches: one branch per subgroup (a reflection branch beside the free branch,
        which then becomes the rotation branch), each with its own gamma and state.
    scores_heldout: molecules the training loop marks held out (``RECMController.hold_out``,
        ``RECMConfig.heldout_every``) train no branch and are the only ones b is scored on.
    """

    name: ClassVar[str]
    has_free_branch: ClassVar[bool] = True
    branch_active_in_eval: ClassVar[bool] = True
    collects_signals: ClassVar[bool] = False
    surrogate_branch_gradient: ClassVar[bool] = False
    subgroup_branches: ClassVar[bool] = False
    scores_heldout: ClassVar[bool] = False

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
               b: SignalSummary | None, mean_dgamma: float | None) -> None:
        """Advance a live (not dropped) branch's state by one optimiser step.

        progress: fraction of training done, in [0, 1]; b: the step's per-molecule b (count,
        mean, mean square); mean_dgamma: the step's mean dJ/dgamma (None when the step
        recorded none)."""

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
    (docs/design/recm.md section 1); the branch is off at test time and dropped at export."""

    name = "scheduled"
    branch_active_in_eval = False

    def initial_gamma(self, config: RECMConfig) -> float:
        return 0.0

    def regularization_weight(self, config: RECMConfig) -> float:
        return config.scheduled_reg_weight

    def penalty(self, free_out, residual, gamma, scale, output):
        # defect of the branch relative to the branch, so its scale is irrelevant
        return residual.pow(2).sum() / (free_out.pow(2).sum() + _TINY)

    def update(self, state, config, progress, b, mean_dgamma):
        state.gamma.fill_(max(0.0, 1.0 - abs(2.0 * float(progress) - 1.0)))

    def keeps_branch_at_export(self, gamma, config):
        return False


class ACE(ModePolicy):
    """Primal-dual on the coefficient (``gamma -= eta_p (dJ/dgamma + lambda)``,
    ``lambda += eta_d gamma``); starts fully relaxed, truncated at export under
    ``ace_truncation`` since gamma only reaches zero asymptotically."""

    name = "ace"
    collects_signals = True

    def update(self, state, config, progress, b, mean_dgamma):
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
    """The recurrent update of the package docstring, one per subgroup branch, with the
    absorbing significance test."""

    name = "recm"
    collects_signals = True
    surrogate_branch_gradient = True
    subgroup_branches = True
    scores_heldout = True

    def initial_gamma(self, config: RECMConfig) -> float:
        return config.gamma_init

    def regularization_weight(self, config: RECMConfig) -> float:
        return config.reg_weight

    def penalty(self, free_out, residual, gamma, scale, output):
        # section 4: gamma^2 ||r||^2 / ||y||^2, r in the layer's output scale
        return (gamma * scale).pow(2) * residual.pow(2).sum() / (
            output.detach().pow(2).sum() + _TINY)

    def update(self, state, config, progress, b, mean_dgamma):
        if b is None:
            return
        if b.heldout:
            # windowed per-cluster sums: exact over the first `stats_window` steps, then
            # exponential with the same effective window as the running mean
            steps_seen = int(state.step)
            decay = 1.0 - 1.0 / config.stats_window if steps_seen > config.stats_window else 1.0
            state.b_cluster_sum.mul_(decay).add_(b.cluster_sums.to(state.b_cluster_sum))
            state.b_cluster_weight.mul_(decay).add_(
                b.cluster_counts.to(state.b_cluster_weight))
        if b.count > 0:
            self._follow(state, config, b, gate_open(state, config))
        if absorbing_test_passes(state, config):
            state.patience += 1
        else:
            state.patience.zero_()
        if int(state.patience) >= config.patience:
            state.dropped.fill_(True)
            state.gamma.zero_()

    @staticmethod
    def _follow(state, config, b, gate: bool = True) -> None:
        """The recurrent update of gamma and the running moments of b from one step's b;
        with the gate closed gamma decays towards 0 (``RECMConfig.gamma_gate``)."""
        # running moments, one update per step: exact mean for the first `stats_window`
        # steps, then exponential
        steps_seen = int(state.step)  # already advanced for this step by the controller
        weight = 1.0 / max(1, min(steps_seen, config.stats_window))
        signal = b.mean
        if b.weight is not None:
            # magnitude-weighted b: this step's weighted mean times its weight relative to
            # the running mean step weight, so that E[signal] is the ratio
            # E[sum w b] / E[sum w] over steps, the mean the absorbing test estimates
            if float(state.b_weight_mean) <= 0:
                state.b_weight_mean.fill_(b.weight)
            else:
                state.b_weight_mean.fill_((1 - weight) * float(state.b_weight_mean)
                                          + weight * b.weight)
            signal = b.mean * b.weight / float(state.b_weight_mean)
        target = config.gamma_max * signal if gate else 0.0
        gamma = (1.0 - config.beta) * float(state.gamma) + config.beta * target
        state.gamma.fill_(min(max(gamma, 0.0), config.gamma_max))
        # what the export uses (RECMState.export_gamma): the mean over the same window
        averaged = int(state.gamma_average_steps) + 1
        average_weight = 1.0 / min(averaged, config.stats_window)
        state.gamma_average.fill_((1 - average_weight) * float(state.gamma_average)
                                  + average_weight * float(state.gamma))
        state.gamma_average_steps.add_(1)
        state.b_mean.fill_((1 - weight) * float(state.b_mean) + weight * signal)
        state.b_sq_mean.fill_((1 - weight) * float(state.b_sq_mean) + weight * b.sq_mean)
        state.b_count.add_(b.count)

    def keeps_branch_at_export(self, gamma, config):
        return gamma != 0.0

    def log_values(self, state, config):
        t = gap_statistic(state, config)
        ucb = upper_confidence_fixed_point(state, config)
        return {"b_mean": float(state.b_mean),
                "gap_t": t if math.isfinite(t) else 0.0,
                "fixed_point_ucb": ucb if math.isfinite(ucb) else -1.0}


def effective_samples(state: RECMState, config: RECMConfig) -> float:
    """Molecules behind the running mean of b: those of the last ``stats_window`` steps
    (all of them before that), at the average number of molecules per step."""
    steps, count = int(state.step), int(state.b_count)
    if steps < 1 or count < 1:
        return 0.0
    return count * min(1.0, config.stats_window / steps)


def scored_heldout(state: RECMState) -> bool:
    """Whether the state's b statistics come from held-out molecules (cluster sums)."""
    return bool(state.b_cluster_weight.sum() > 0)


def cluster_mean_and_standard_error(state: RECMState) -> tuple[float, float]:
    """Mean of held-out b and its cluster-robust standard error (inf before two clusters).

    With per-cluster windowed sums S_c of b and W_c of counts, m = sum S_c / sum W_c and
    Var(m) ~ C/(C-1) sum_c (S_c - m W_c)^2 / (sum W_c)^2 over the C non-empty clusters: the
    clusters (fixed sets of molecules) are independent, a molecule's repeated visits are
    not."""
    sums = state.b_cluster_sum.to(torch.float64)
    weights = state.b_cluster_weight.to(torch.float64)
    total = float(weights.sum())
    if total <= 0:
        return 0.0, math.inf
    mean = float(sums.sum()) / total
    clusters = int((weights > 0).sum())
    if clusters < 2:
        return mean, math.inf
    variance = float((sums - mean * weights).pow(2).sum()) / total ** 2
    return mean, math.sqrt(variance * clusters / (clusters - 1))


def b_mean_and_standard_error(state: RECMState, config: RECMConfig) -> tuple[float, float]:
    """The mean of b the absorbing test uses and its standard error: cluster-robust over
    held-out molecules when b is scored on them, else the running moments over every
    molecule's b as independent samples (inf before two samples)."""
    if scored_heldout(state):
        return cluster_mean_and_standard_error(state)
    return float(state.b_mean), b_standard_error(state, config)


def b_standard_error(state: RECMState, config: RECMConfig) -> float:
    """Standard error of the running mean of per-molecule b (inf before two samples)."""
    samples = effective_samples(state, config)
    if samples < 2:
        return math.inf
    variance = max(float(state.b_sq_mean) - float(state.b_mean) ** 2, 0.0)
    return math.sqrt(variance / samples)


def gap_statistic(state: RECMState, config: RECMConfig) -> float:
    """t = (mean(b) - margin) / standard error: how many standard errors the mean of b is
    above the margin (``RECMConfig.margin``: 0 by default for held-out b, 0.01 for b on
    training molecules; the package docstring's test statistic; nan before two samples)."""
    heldout = scored_heldout(state)
    mean, stderr = b_mean_and_standard_error(state, config)
    if not math.isfinite(stderr):
        return math.nan
    return (mean - config.margin(heldout)) / max(stderr, _TINY)


def upper_confidence_fixed_point(state: RECMState, config: RECMConfig) -> float:
    """gamma_max * (mean(b) + z * standard error), z = ``confidence_z``: an upper bound on
    the fixed point, reported in the logs (inf before two samples)."""
    mean, stderr = b_mean_and_standard_error(state, config)
    if not math.isfinite(stderr):
        return math.inf
    return config.gamma_max * (mean + config.confidence_z * stderr)


def gate_open(state: RECMState, config: RECMConfig) -> bool:
    """Whether gamma may follow b this step (``RECMConfig.gamma_gate``): ``significant``
    (experimental): only while the absorbing test's b, scored on held-out molecules, shows a gap
    (t above the test's normal quantile; never before it has evidence); ``always`` (default):
    every step. b scored on training molecules (no hold-out keys) is not
    gated."""
    if config.gamma_gate == "always" or not scored_heldout(state):
        return True
    t = gap_statistic(state, config)
    return math.isfinite(t) and t >= config.significance_z


def absorbing_test_passes(state: RECMState, config: RECMConfig) -> bool:
    """After ``absorb_after_steps`` steps and with at least ``min_samples`` molecules of
    evidence, ``RECMConfig.absorb_rule``: ``not-significant``: the one-sided test of
    ``E[b] <= margin`` at level ``significance_level`` does not reject (t below the normal
    quantile); ``shown-small``: the gap is shown to be under ``equivalence_margin`` (the upper
    confidence bound ``mean + z stderr`` at the same level is below it)."""
    if int(state.step) < config.absorb_after_steps or int(state.b_count) < config.min_samples:
        return False
    if config.absorb_rule == "shown-small":
        mean, stderr = b_mean_and_standard_error(state, config)
        return (math.isfinite(stderr)
                and mean + config.significance_z * stderr < config.equivalence_margin)
    t = gap_statistic(state, config)
    return math.isfinite(t) and t < config.significance_z


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
