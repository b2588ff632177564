"""The modulated layer ``y = f_eq(x) + gamma * n(f_free(x))`` and its per-layer state.

Knows nothing of molecules: it wraps any module given its input and output irreps.
"""

from __future__ import annotations

import torch
from e3nn import o3
from torch import nn

from conformer.recm.config import RECMConfig
from conformer.recm.haar import random_orthogonal, wigner_d

_TINY = 1e-12


class RECMState(nn.Module):
    """Recurrent state of one layer, all buffers, registered on its layer as ``state`` (so it
    is in the layer's ``state_dict`` as ``<layer>.state.*`` and moves with ``.to``).

    gamma: the modulation coefficient; b_mean / b_sq_mean / b_count: running (exponential,
    window ``stats_window``) moments of the symmetry-violation signal b; patience: consecutive
    steps the absorbing test passed; dropped: 1 once absorbed (frozen strictly equivariant);
    dual: ACE's Lagrange multiplier; step: optimiser steps seen (seeds the group samples).

    Files written before the state moved onto its layer keep it under the controller
    (``recm.states.<i>.*``); the controller copies those values in when such a file is loaded,
    and ``_load_from_state_dict`` below keeps the layer's own keys from being reported missing.
    """

    BUFFERS = ("gamma", "b_mean", "b_sq_mean", "b_count", "patience", "dropped", "dual", "step")

    def __init__(self, config: RECMConfig):
        super().__init__()
        policy = config.policy
        self.register_buffer("gamma", torch.tensor(float(policy.initial_gamma(config))))
        self.register_buffer("b_mean", torch.tensor(0.0))
        self.register_buffer("b_sq_mean", torch.tensor(0.0))
        self.register_buffer("b_count", torch.tensor(0, dtype=torch.int64))
        self.register_buffer("patience", torch.tensor(0, dtype=torch.int64))
        self.register_buffer("dropped", torch.tensor(not policy.has_free_branch))
        self.register_buffer("dual", torch.tensor(0.0))
        self.register_buffer("step", torch.tensor(0, dtype=torch.int64))
        # signals gathered by backward hooks since the last optimiser step (not state)
        self.pending_b: list[torch.Tensor] = []
        self.pending_dgamma: list[torch.Tensor] = []

    def record_signals(self, b: torch.Tensor, dgamma: torch.Tensor) -> None:
        """Called by the layer's backward hook: one b and one dJ/dgamma (0-dim float64)."""
        self.pending_b.append(b)
        self.pending_dgamma.append(dgamma)

    def take_pending(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The signals recorded since the last call (b's, dJ/dgamma's), emptying the lists."""
        pending = (self.pending_b, self.pending_dgamma)
        self.pending_b, self.pending_dgamma = [], []
        return pending

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the old layout has none of this layer's keys: keep the current values (the controller
        # fills them from ``recm.states.<i>.*``, before or after this runs)
        if not any(prefix + name in state_dict for name in self.BUFFERS):
            for name in self.BUFFERS:
                state_dict[prefix + name] = getattr(self, name).detach().clone()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"gamma={float(self.gamma):.4g}, dropped={bool(self.dropped)}"


class FreeBranch(nn.Module):
    """Unconstrained GELU MLP on flattened features: [N, dim_in] -> [N, dim_out]."""

    def __init__(self, dim_in: int, dim_out: int, hidden: int, layers: int, init_std: float):
        super().__init__()
        modules: list[nn.Module] = []
        width = dim_in
        for _ in range(max(layers - 1, 0)):
            modules += [nn.Linear(width, hidden), nn.GELU()]
            width = hidden
        last = nn.Linear(width, dim_out)
        # small, not zero: b is a cosine with the branch's output, undefined for a zero branch
        nn.init.normal_(last.weight, std=init_std)
        nn.init.normal_(last.bias, std=init_std)
        modules.append(last)
        self.net = nn.Sequential(*modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _rms(t: torch.Tensor) -> torch.Tensor:
    return t.pow(2).mean().sqrt()


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by ``factor``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(factor)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (factor,) = ctx.saved_tensors
        return grad * factor.to(grad.dtype), None


def free_branch_seed(seed: int, layer_index: int) -> int:
    """Seed of the initial weights of layer ``layer_index``'s free branch (RECMConfig.seed)."""
    return seed + 1 + 7919 * layer_index


class ModulatedLayer(nn.Module):
    """``y = layer(x, *args) + gamma * n(free(z))`` with ``z = free_input`` or ``x``.

    layer: a strictly equivariant module whose output has ``irreps_out`` (shape [N, dim_out]).
    irreps_free_in: irreps of the free branch's input ``z`` [N, dim] (default ``irreps_in``).
    layer_index: the layer's position among the network's modulated layers (0, 1, ...), as
    given to ``RECMController``; it seeds the free branch, so layers with equal irreps differ.
    n(.) rescales the free output to the RMS of the layer's output, so that gamma alone
    carries the free branch's magnitude. The factor is a running average over training
    batches (buffer ``free_scale``), not the current batch's ratio: a molecule's output must
    not depend on which other molecules share its batch, in training or at inference.
    """

    def __init__(self, layer: nn.Module, irreps_in, irreps_out, config: RECMConfig,
                 irreps_free_in=None, layer_index: int = 0):
        super().__init__()
        self.layer = layer
        self.irreps_in = o3.Irreps(irreps_in)
        self.irreps_out = o3.Irreps(irreps_out)
        self.irreps_free_in = o3.Irreps(irreps_free_in) if irreps_free_in else self.irreps_in
        self.mode = config.mode
        self.policy = config.policy
        self.config = config
        # position in the network (the controller checks it): seeds the free branch's
        # initial weights and the group samples, so that no two layers share either
        self.layer_index = int(layer_index)
        self.state = RECMState(config)
        if not self.policy.has_free_branch:
            self.free = None
        else:
            # own random stream: the equivariant blocks get the same initial weights in every
            # mode, so a comparison of modes is not confounded by their initialisation
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(free_branch_seed(config.seed, self.layer_index))
                self.free = FreeBranch(self.irreps_free_in.dim, self.irreps_out.dim,
                                       config.free_hidden, config.free_layers,
                                       config.free_init_std)
            # running RMS(f_eq) / RMS(f_free); 0 = not yet measured
            self.register_buffer("free_scale", torch.tensor(0.0))
        self._regularizer: torch.Tensor | None = None

    _SCALE_MOMENTUM = 0.05

    def _normalization(self, y_eq: torch.Tensor, free_out: torch.Tensor) -> torch.Tensor:
        """The detached factor of n(.): the running ratio, updated by training forwards."""
        update = self.training and torch.is_grad_enabled()
        with torch.no_grad():
            batch_ratio = (_rms(y_eq) / (_rms(free_out) + _TINY)).to(self.free_scale.dtype)
            if update:
                if float(self.free_scale) == 0.0:
                    self.free_scale.copy_(batch_ratio)
                else:
                    self.free_scale.lerp_(batch_ratio, self._SCALE_MOMENTUM)
            elif float(self.free_scale) == 0.0:  # an untrained network: nothing to reuse
                return batch_ratio.to(y_eq.dtype)
            return self.free_scale.to(y_eq.dtype).clone()

    # -- group averaging -------------------------------------------------------------------
    def _group_samples(self, dtype, device):
        generator = torch.Generator().manual_seed(
            int(self.config.seed) * 1_000_003 + self.layer_index * 7919 + int(self.state.step))
        for _ in range(self.config.num_group_samples):
            rotation = random_orthogonal(generator, torch.float64)
            d_in = wigner_d(self.irreps_free_in, rotation).to(dtype=dtype, device=device)
            d_out = wigner_d(self.irreps_out, rotation).to(dtype=dtype, device=device)
            yield d_in, d_out

    def projected(self, z: torch.Tensor) -> torch.Tensor:
        """Monte-Carlo Haar projection ``E_g rho_out(g)^-1 f(rho_in(g) z)``, [N, dim_out]."""
        total = None
        for d_in, d_out in self._group_samples(z.dtype, z.device):
            term = self.free(z @ d_in.T) @ d_out  # rho_out(g)^-1 = D_out^T acts as @ D_out
            total = term if total is None else total + term
        return total / self.config.num_group_samples

    # -- forward ---------------------------------------------------------------------------
    def branch_active(self) -> bool:
        if self.free is None or bool(self.state.dropped):
            return False
        return self.training or self.policy.branch_active_in_eval

    def forward(self, x: torch.Tensor, *args, free_input: torch.Tensor | None = None,
                **kwargs) -> torch.Tensor:
        y_eq = self.layer(x, *args, **kwargs)
        self._regularizer = None
        if not self.branch_active():
            return y_eq
        z = x if free_input is None else free_input
        gamma = self.state.gamma.to(y_eq.dtype)
        surrogate = self.policy.surrogate_branch_gradient
        if surrogate and torch.is_grad_enabled():
            # the layers below get the true gradient of gamma * n(f(z)): gamma times the
            # gradient the branch passes back (see the value/gradient split below)
            z = _ScaleGradient.apply(z, gamma.detach())
        free_out = self.free(z)
        scale = self._normalization(y_eq, free_out)
        normalized = free_out * scale
        if surrogate:
            # value: y_eq + gamma n(f); gradient into the branch's own parameters: as if gamma
            # were 1. The branch keeps learning the direction it would take at full use while
            # gamma is small, so b (its alignment with the descent direction) stays
            # informative: without this a branch switched off early never learns, b stays <= 0
            # and gamma never recovers. Only the branch gets this surrogate: the rest of the
            # network is trained on the loss as computed (gradient scaling of z above).
            y = y_eq + gamma * normalized.detach() + (normalized - normalized.detach())
        else:
            y = y_eq + gamma * normalized
        if not (self.training and torch.is_grad_enabled()):
            return y
        if self.policy.regularization_weight(self.config) > 0:
            # penalty on the non-equivariant part, relative so the branch's scale is irrelevant
            residual = free_out - self.projected(z)
            self._regularizer = self.policy.penalty(free_out, residual, gamma, scale, y)
        if self.policy.collects_signals and y.requires_grad:
            with torch.no_grad():
                residual = (free_out - self.projected(z)).detach()
            direction = normalized.detach()
            state = self.state

            def collect(grad: torch.Tensor) -> None:
                with torch.no_grad():
                    inner = (grad * residual).sum()
                    norm = grad.norm() * residual.norm() + _TINY
                    state.record_signals((-inner / norm).to(torch.float64),
                                         (grad * direction).sum().to(torch.float64))

            y.register_hook(collect)
        return y

    def regularizer(self) -> torch.Tensor | None:
        """The last training forward's penalty (None when there is none)."""
        return self._regularizer

    def drop_branch(self) -> None:
        """Remove the free branch for good: the layer is then exactly ``layer``."""
        self.free = None
        self.state.dropped.fill_(True)
        self.state.gamma.zero_()
