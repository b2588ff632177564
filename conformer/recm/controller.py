"""The one object the training loop talks to: ``net.recm``."""

from __future__ import annotations

import math

import torch
from torch import nn

from conformer.recm.config import RECMConfig
from conformer.recm.layer import ModulatedLayer


class RECMController(nn.Module):
    """Holds every modulated layer's state (``states.<i>.*`` in ``state_dict``) and updates it.

    Training loop contract (call order per optimiser step): forward, ``loss +
    regularization_loss()``, backward (hooks collect each layer's signal), ``optimizer.step()``,
    then ``after_optimizer_step(progress)``.
    """

    def __init__(self, layers: list[ModulatedLayer], config: RECMConfig):
        super().__init__()
        self.config = config
        self.states = nn.ModuleList([layer.state for layer in layers])
        for index, layer in enumerate(layers):
            layer.layer_index = index
        object.__setattr__(self, "layers", tuple(layers))  # referenced, owned by the network

    @property
    def mode(self) -> str:
        return self.config.mode

    @torch.no_grad()
    def after_optimizer_step(self, progress: float) -> None:
        """Advance every layer's state by one optimiser step; progress in [0, 1] of training."""
        cfg = self.config
        for state in self.states:
            signals = state.pending_b
            dgammas = state.pending_dgamma
            state.pending_b, state.pending_dgamma = [], []
            state.step += 1
            if bool(state.dropped):
                continue
            if self.mode == "scheduled":
                state.gamma.fill_(max(0.0, 1.0 - abs(2.0 * float(progress) - 1.0)))
            elif self.mode == "ace" and dgammas:
                dgamma = float(torch.stack(dgammas).mean())
                gamma = float(state.gamma) - cfg.ace_primal_lr * (dgamma + float(state.dual))
                gamma = min(max(gamma, 0.0), cfg.gamma_max)
                state.gamma.fill_(gamma)
                state.dual += cfg.ace_dual_lr * gamma
            elif self.mode == "recm" and signals:
                self._recm_update(state, float(torch.stack(signals).mean()))

    def _recm_update(self, state, b: float) -> None:
        cfg = self.config
        gamma = (1.0 - cfg.beta) * float(state.gamma) + cfg.beta * cfg.gamma_max * b
        state.gamma.fill_(min(max(gamma, 0.0), cfg.gamma_max))
        # running moments of b: exact mean for the first `stats_window` steps, then exponential
        count = int(state.b_count) + 1
        weight = 1.0 / min(count, cfg.stats_window)
        state.b_mean.fill_((1 - weight) * float(state.b_mean) + weight * b)
        state.b_sq_mean.fill_((1 - weight) * float(state.b_sq_mean) + weight * b * b)
        state.b_count.fill_(count)
        if self._absorbing_test_passes(state):
            state.patience += 1
        else:
            state.patience.zero_()
        if int(state.patience) >= cfg.patience:
            state.dropped.fill_(True)
            state.gamma.zero_()

    def upper_confidence_fixed_point(self, state) -> float:
        """gamma_max * (mean(b) + z * standard error): an upper bound on the fixed point."""
        count = int(state.b_count)
        if count < 2:
            return math.inf
        variance = max(float(state.b_sq_mean) - float(state.b_mean) ** 2, 0.0)
        effective = min(count, self.config.stats_window)
        stderr = math.sqrt(variance / effective)
        return self.config.gamma_max * (float(state.b_mean) + self.config.confidence_z * stderr)

    def _absorbing_test_passes(self, state) -> bool:
        cfg = self.config
        return (int(state.b_count) >= cfg.min_samples
                and float(state.gamma) < cfg.gamma_min
                and self.upper_confidence_fixed_point(state) < cfg.gamma_min)

    def regularization_loss(self) -> torch.Tensor:
        """Weighted sum of the layers' penalties from the last training forward (0 if none)."""
        weight = self.config.scheduled_reg_weight if self.mode == "scheduled" else \
            self.config.reg_weight
        terms = [layer.regularizer() for layer in self.layers]
        terms = [t for t in terms if t is not None]
        if not terms or weight == 0:
            reference = self.states[0].gamma if len(self.states) else torch.tensor(0.0)
            return torch.zeros((), dtype=reference.dtype, device=reference.device)
        return weight * torch.stack(terms).sum()

    def gammas(self) -> list[float]:
        return [float(state.gamma) for state in self.states]

    def log_dict(self) -> dict[str, float]:
        """Per-layer gamma, b statistics, dropped flag, ACE dual (for loggers, every step)."""
        out: dict[str, float] = {}
        for index, state in enumerate(self.states):
            out[f"recm/gamma_{index}"] = float(state.gamma)
            out[f"recm/dropped_{index}"] = float(state.dropped)
            if self.mode == "recm":
                out[f"recm/b_mean_{index}"] = float(state.b_mean)
                ucb = self.upper_confidence_fixed_point(state)
                out[f"recm/fixed_point_ucb_{index}"] = ucb if math.isfinite(ucb) else -1.0
            if self.mode == "ace":
                out[f"recm/dual_{index}"] = float(state.dual)
        return out
