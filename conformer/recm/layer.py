"""The modulated layer ``y = f_eq(x) + gamma * n(f_free(x))`` and its per-layer state.

Knows nothing of molecules: it wraps any module given its input and output irreps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from e3nn import o3
from torch import nn

from conformer.recm.config import RECMConfig
from conformer.recm.haar import random_orthogonal, wigner_d

_TINY = 1e-12

HELDOUT_CLUSTERS = 256
"""Clusters of held-out molecules behind the cluster-robust standard error of b: a held-out
molecule comes back every epoch with nearly the same b (the reflection branch's b does not
change under the proper rotations of augmentation), so its visits are not independent
samples; each molecule always falls in the same cluster (``heldout_cluster``)."""


def heldout_cluster(keys: torch.Tensor, heldout_every: int) -> torch.Tensor:
    """The cluster [G] (in [0, HELDOUT_CLUSTERS)) of held-out molecules with keys [G]: held-out
    keys are multiples of ``heldout_every``, so consecutive ones go to consecutive clusters."""
    return torch.div(keys, heldout_every, rounding_mode="floor") % HELDOUT_CLUSTERS


@dataclass(frozen=True)
class SignalSummary:
    """Count, weighted mean and weighted mean square of the per-molecule b recorded in one
    optimiser step, and, when b was scored on held-out molecules, the weighted sum of b and
    the sum of weights per cluster (float64 [HELDOUT_CLUSTERS] each; None otherwise).
    ``weight``: the sum of the molecules' weights (``count`` when b is unweighted, see
    ``RECMConfig.b_weighting``)."""

    count: int
    mean: float
    sq_mean: float
    cluster_sums: torch.Tensor | None = None
    cluster_counts: torch.Tensor | None = None
    weight: float | None = None

    @property
    def total_weight(self) -> float:
        return float(self.count) if self.weight is None else float(self.weight)

    @property
    def heldout(self) -> bool:
        return self.cluster_sums is not None

    @staticmethod
    def of(values: list[torch.Tensor],
           clusters: list[torch.Tensor | None] | None = None,
           weights: list[torch.Tensor | None] | None = None,
           tested: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] | None = None,
           ) -> SignalSummary | None:
        """Summary of per-molecule b's (``values``), with their clusters and weights (each
        list parallel to ``values``; None entries or None: unweighted / no clusters).
        ``tested``: (b, clusters, weights) of the molecules the absorbing test is scored on
        when they are not the ones of ``values`` (``RECMConfig.heldout_point`` equivariant);
        the cluster sums then come from them, the count and means from ``values`` (count 0
        when a step had only tested molecules)."""
        mean_part = _weighted(values, weights)
        if tested is not None:
            cluster_part = _weighted([t[0] for t in tested], [t[2] for t in tested])
            cluster_index = [t[1] for t in tested]
        else:
            cluster_part, cluster_index = mean_part, clusters
        sums = counts = None
        if (cluster_part is not None and cluster_index
                and all(c is not None for c in cluster_index)):
            flat, mass, _, _ = cluster_part
            index = torch.cat([c.reshape(-1).to(torch.long).cpu() for c in cluster_index])
            sums = torch.zeros(HELDOUT_CLUSTERS, dtype=torch.float64).index_add_(
                0, index, flat * mass)
            counts = torch.zeros(HELDOUT_CLUSTERS, dtype=torch.float64).index_add_(
                0, index, mass)
        if mean_part is None:
            if sums is None:
                return None
            return SignalSummary(0, 0.0, 0.0, sums, counts, None)
        flat, mass, total, weighted = mean_part
        return SignalSummary(int(flat.numel()), float((flat * mass).sum()) / total,
                             float((flat.pow(2) * mass).sum()) / total, sums, counts,
                             total if weighted else None)


def _weighted(values: list[torch.Tensor], weights: list[torch.Tensor | None] | None):
    """(b [M], weights [M], total weight, weighted?) of the molecules in ``values`` (float64,
    CPU), or None without any."""
    if not values:
        return None
    flat = torch.cat([v.reshape(-1).to(torch.float64) for v in values]).cpu()
    if flat.numel() == 0:
        return None
    weighted = bool(weights) and all(w is not None for w in weights)
    mass = (torch.cat([w.reshape(-1).to(torch.float64) for w in weights]).cpu()
            if weighted else torch.ones_like(flat))
    total = float(mass.sum())
    if total <= 0:
        # no molecule gives the branch anything to write or follow (its inputs are zero):
        # every b is 0, counted alike, which is evidence of no gap, so such a branch is
        # absorbed as before rather than kept for lack of evidence
        weighted, mass, total = False, torch.ones_like(flat), float(flat.numel())
    return flat, mass, total, weighted


class RECMState(nn.Module):
    """Recurrent state of one layer, all buffers, registered on its layer as ``state`` (so it
    is in the layer's ``state_dict`` as ``<layer>.state.*`` and moves with ``.to``).

    gamma: the modulation coefficient; b_mean / b_sq_mean: running (exponential, window
    ``stats_window`` steps) moments of the per-molecule symmetry-violation signal b;
    b_weight_mean: running mean of a step's total weight of b (``RECMConfig.b_weighting``);
    b_count: molecules whose b was recorded (steps, in files written before b was per
    molecule); b_cluster_sum / b_cluster_weight [HELDOUT_CLUSTERS]: windowed sums of held-out
    b and of counts per cluster of molecules (zero when b is scored on training molecules),
    for the cluster-robust standard error; patience: consecutive
    steps the absorbing test passed; dropped: 1 once absorbed (frozen strictly equivariant);
    dual: ACE's Lagrange multiplier; step: optimiser steps seen (seeds the group samples);
    gamma_average / gamma_average_steps: running mean of gamma (window ``stats_window`` steps,
    as b's moments) and the updates behind it, kept by ``recm`` mode: the export's gamma
    (``export_gamma``). Why: gamma follows a heavy-tailed b, so one step's gamma scatters
    around its fixed point (0 to 0.38 within 20 steps on the bundled model's reflection
    branches) while the exported weights are an average over many steps; the averaged gamma
    is the fixed point's estimate, and a kept branch is not dropped for a gamma that happened
    to be clipped to 0 at the last step.

    Files written before the state moved onto its layer keep it under the controller
    (``recm.states.<i>.*``); the controller copies those values in when such a file is loaded,
    and ``_load_from_state_dict`` below keeps the layer's own keys from being reported missing.
    """

    BUFFERS = ("gamma", "b_mean", "b_sq_mean", "b_count", "patience", "dropped", "dual", "step",
               "b_cluster_sum", "b_cluster_weight", "b_weight_mean", "gamma_average",
               "gamma_average_steps")
    ADDED_LATER = ("b_cluster_sum", "b_cluster_weight", "b_weight_mean", "gamma_average",
                   "gamma_average_steps")
    """Buffers that older files lack (loaded as zeros: no cluster statistics, no gamma
    average, so their export keeps the last gamma)."""

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
        self.register_buffer("b_cluster_sum", torch.zeros(HELDOUT_CLUSTERS, dtype=torch.float64))
        self.register_buffer("b_cluster_weight",
                             torch.zeros(HELDOUT_CLUSTERS, dtype=torch.float64))
        # running mean of a step's total weight of b (magnitude weighting), so that the
        # gamma update weighs each step's b as the absorbing test's ratio estimate does
        self.register_buffer("b_weight_mean", torch.tensor(0.0, dtype=torch.float64))
        self.register_buffer("gamma_average", torch.tensor(0.0, dtype=torch.float64))
        self.register_buffer("gamma_average_steps", torch.tensor(0, dtype=torch.int64))
        # signals gathered by backward hooks since the last optimiser step (not state)
        self.pending_b: list[torch.Tensor] = []
        self.pending_clusters: list[torch.Tensor | None] = []
        self.pending_weights: list[torch.Tensor | None] = []
        self.pending_dgamma: list[torch.Tensor] = []
        self.pending_tested: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
        # set by RECMController.synchronize_signals: the same values on every rank
        self.pending_summary: SignalSummary | None = None
        self.pending_dgamma_mean: float | None = None

    def record_signals(self, b: torch.Tensor, dgamma: torch.Tensor,
                       clusters: torch.Tensor | None = None,
                       weights: torch.Tensor | None = None,
                       tested: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]
                       | None = None) -> None:
        """Called by the layer's backward hook: b per molecule ([G] or 0-dim float64), one
        dJ/dgamma (0-dim float64), for b scored on held-out molecules each molecule's
        cluster ([G] int, ``heldout_cluster``) and, for magnitude-weighted b, each
        molecule's weight ([G] float64, the cosine's denominator). ``tested``: (b, clusters,
        weights) of the molecules the absorbing test is scored on when they are not those
        of ``b`` (``RECMConfig.heldout_point`` equivariant)."""
        if tested is not None:
            self.pending_tested.append(tested)
        self.pending_b.append(b)
        self.pending_clusters.append(clusters)
        self.pending_weights.append(weights)
        self.pending_dgamma.append(dgamma)

    def take_pending(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The signals recorded since the last call (b's, dJ/dgamma's), emptying the lists
        (the clusters of the b's are in ``pending_clusters`` until then)."""
        pending = (self.pending_b, self.pending_dgamma)
        self.pending_b, self.pending_dgamma, self.pending_clusters = [], [], []
        self.pending_weights, self.pending_tested = [], []
        return pending

    def take_summary(self) -> tuple[SignalSummary | None, float | None]:
        """This step's b summary over every molecule recorded (or the all-ranks summary set
        by ``synchronize_signals``) and mean dJ/dgamma, emptying the pending signals."""
        summary, self.pending_summary = self.pending_summary, None
        dgamma_mean, self.pending_dgamma_mean = self.pending_dgamma_mean, None
        clusters, weights = self.pending_clusters, self.pending_weights
        tested = self.pending_tested or None
        b_values, dgammas = self.take_pending()
        if len(clusters) != len(b_values):  # b appended directly (tests): no clusters
            clusters = None
        if len(weights) != len(b_values):
            weights = None
        if summary is None:
            summary = SignalSummary.of(b_values, clusters, weights, tested)
        if dgamma_mean is None and dgammas:
            dgamma_mean = float(torch.stack([d.reshape(()) for d in dgammas]).mean())
        return summary, dgamma_mean

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the old layout has none of this layer's keys: keep the current values (the controller
        # fills them from ``recm.states.<i>.*``, before or after this runs)
        if not any(prefix + name in state_dict for name in self.BUFFERS):
            for name in self.BUFFERS:
                state_dict[prefix + name] = getattr(self, name).detach().clone()
        # files written before held-out scoring: no cluster statistics (b was on training
        # molecules), i.e. zeros
        for name in self.ADDED_LATER:
            if prefix + name not in state_dict:
                state_dict[prefix + name] = torch.zeros_like(getattr(self, name))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def export_gamma(self) -> float:
        """The gamma an export gives the branch: the running mean when the mode kept one,
        else the current gamma (other modes, older files)."""
        if int(self.gamma_average_steps) > 0:
            return float(self.gamma_average)
        return float(self.gamma)

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


def flipped_parity(irreps) -> o3.Irreps:
    """``irreps`` with every parity flipped, in the same order (same layout)."""
    return o3.Irreps([(mul, (ir.l, -ir.p)) for mul, ir in o3.Irreps(irreps)])


def inversion(irreps) -> torch.Tensor:
    """rho(-I) on ``irreps`` as a [dim] vector of signs: the parity of each component."""
    return torch.cat([torch.full((mul * ir.dim,), float(ir.p)) for mul, ir in o3.Irreps(irreps)]
                     or [torch.zeros(0)])


class ReflectionBranch(nn.Module):
    """The reflection branch: exactly rotation-equivariant and reflection-odd.

    An ``o3.Linear`` from ``irreps_in`` to ``irreps_out`` with every parity flipped, its output
    read as ``irreps_out``: ``g(rho_in(R) x) = rho_out(R) g(x)`` for proper rotations R and
    ``g(rho_in(-I) x) = -rho_out(-I) g(x)``. So it can add exactly what an O(3)-equivariant
    layer cannot (e.g. write a pseudoscalar from an even stereo label) and nothing that breaks
    rotations. forward: [N, irreps_in.dim] -> [N, irreps_out.dim]. ``scale`` is the running
    factor of n(.) (0 = not yet measured); it lives here so a file without the branch has no
    key for it.
    """

    def __init__(self, irreps_in, irreps_out, inputs: str = "all"):
        super().__init__()
        read, columns = branch_inputs(irreps_in, inputs)
        self.linear = o3.Linear(read, flipped_parity(irreps_out))
        self.register_buffer("columns", columns, persistent=False)
        # output irrep block -> the input blocks feeding it (followable_sq's spans)
        self._feeds: dict[int, list[int]] = {}
        for instruction in self.linear.instructions:
            self._feeds.setdefault(instruction.i_out, []).append(instruction.i_in)
        self.register_buffer("scale", torch.tensor(0.0))

    @staticmethod
    def has_paths(irreps_in, irreps_out, inputs: str = "all") -> bool:
        """Whether any input irrep it reads maps to a flipped output irrep (else it is 0)."""
        flipped = {ir for _, ir in flipped_parity(irreps_out)}
        return any(ir in flipped for _, ir in branch_inputs(irreps_in, inputs)[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x if self.columns is None else x[:, self.columns])

    def followable_sq(self, x: torch.Tensor, grad: torch.Tensor, graph: torch.Tensor,
                      num_graphs: int) -> torch.Tensor:
        """Per molecule, ``|P_m grad_m|^2``: the squared norm of the part of the descent
        direction this branch could follow with some choice of its weights.

        The branch is linear in its weights, so what it can write on molecule m is a linear
        space: for each output irrep block (U channels, irrep of dimension d), every channel
        is a free combination of the V input channels of the same irrep that feed it (V
        columns of length rows x d). ``P_m`` projects each channel of that block of ``grad``
        onto their span: ``|P grad|^2 = trace(C^T G^+ C)`` with ``G = X^T X`` [V, V] and
        ``C = X^T D`` [V, U] summed over the molecule's rows and the irrep's components.
        G and C are unchanged by rotations, and C changes sign under the inversion of a
        mirror pair (the branch flips parity), so the norm is O(3)-invariant.
        x: [N, layer input dim] (the layer's input; the branch selects its columns);
        grad: [N, layer output dim]; graph: [N] molecule index; returns float64 [G]."""
        x = (x if self.columns is None else x[:, self.columns]).to(torch.float64)
        grad = grad.to(torch.float64)
        irreps_in, irreps_out = self.linear.irreps_in, self.linear.irreps_out
        in_slices, out_slices = irreps_in.slices(), irreps_out.slices()
        total = grad.new_zeros(num_graphs)
        for i_out, inputs in self._feeds.items():
            mul_out, irrep = irreps_out[i_out]
            target = grad[:, out_slices[i_out]].reshape(-1, mul_out, irrep.dim)
            columns = torch.cat([x[:, in_slices[i]].reshape(-1, irreps_in[i].mul, irrep.dim)
                                 for i in inputs], dim=1)
            width = columns.shape[1]
            gram = grad.new_zeros(num_graphs, width, width).index_add_(
                0, graph, torch.einsum("nvk,nwk->nvw", columns, columns))
            cross = grad.new_zeros(num_graphs, width, mul_out).index_add_(
                0, graph, torch.einsum("nvk,nuk->nvu", columns, target))
            # pseudo-inverse: a molecule without any of these inputs (no labelled centre) has
            # G = 0 and nothing to follow
            solved = torch.linalg.pinv(gram, hermitian=True, rtol=1e-10) @ cross
            total = total + (cross * solved).sum((1, 2))
        return total.clamp_min(0.0)


def branch_inputs(irreps_in, inputs: str = "all") -> tuple[o3.Irreps, torch.Tensor | None]:
    """(the irreps the reflection branch reads, their columns in the layer input or None for
    all): ``RECMConfig.reflection_inputs``; ``pseudo`` keeps the irreps with p = -(-1)^l."""
    irreps_in = o3.Irreps(irreps_in)
    if inputs == "all":
        return irreps_in, None
    kept, columns = [], []
    for (mul, ir), block in zip(irreps_in, irreps_in.slices(), strict=True):
        if ir.p == -((-1) ** ir.l):
            kept.append((mul, ir))
            columns.extend(range(block.start, block.stop))
    return o3.Irreps(kept), torch.tensor(columns, dtype=torch.long)


def reflection_branch_seed(seed: int, layer_index: int) -> int:
    """Seed of the initial weights of layer ``layer_index``'s reflection branch."""
    return seed + 2 + 7919 * layer_index + 104_729


def reflection_support(irreps_in, irreps_out) -> torch.Tensor:
    """The output components the reflection branch can write, bool [irreps_out.dim]: those of
    the output irreps whose flipped irrep occurs in ``irreps_in`` (``o3.Linear`` connects equal
    irreps only; every other output component is identically 0). Whole irreps, so the mask
    commutes with every rho_out(g)."""
    available = {(ir.l, ir.p) for _, ir in o3.Irreps(irreps_in)}
    parts = [torch.full((mul * ir.dim,), (ir.l, -ir.p) in available)
             for mul, ir in o3.Irreps(irreps_out)]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.bool)


def molecule_index(graph: torch.Tensor | None, rows: int, num_graphs: int | None,
                   device) -> tuple[torch.Tensor, int]:
    """(graph [rows], G): ``graph`` or, when None, every row in molecule 0; G defaults to
    graph.max() + 1 (0 without rows)."""
    if graph is None:
        graph = torch.zeros(rows, dtype=torch.long, device=device)
    if num_graphs is None:
        num_graphs = int(graph.max()) + 1 if graph.numel() else 0
    return graph, num_graphs


def per_molecule_b(grad: torch.Tensor, residual: torch.Tensor, graph: torch.Tensor | None,
                   num_graphs: int | None = None, channels: torch.Tensor | None = None,
                   support_atoms: bool = False,
                   grad_norm_sq: torch.Tensor | None = None,
                   with_norms: bool = False):
    """b per molecule, ``-<grad_S, r_S> / (|grad_S| |r_S|)`` over each molecule's rows and the
    support S, and which molecules have rows.

    grad, residual: [N, dim]; graph: [N] molecule index of each row (None: one molecule);
    num_graphs: G (default: graph.max() + 1); channels: bool [dim], the branch's output
    support (None: every channel); support_atoms: also restrict to rows where the residual is
    non-zero; grad_norm_sq: float64 [G], replaces ``|grad_S|^2`` in the normaliser (the span
    score: the part of grad the branch can follow, ``ReflectionBranch.followable_sq``; r lies
    in that span, so b stays in [-1, 1]). Returns (float64 [G], bool [G]), and with
    ``with_norms`` also each molecule's denominator (float64 [G], the weight of its b in
    a magnitude-weighted mean); b is 0 for a molecule without rows."""
    grad, residual = grad.to(torch.float64), residual.to(torch.float64)
    if channels is not None:
        grad, residual = grad[:, channels], residual[:, channels]
    graph, num_graphs = molecule_index(graph, grad.shape[0], num_graphs, grad.device)
    residual_sq = (residual * residual).sum(-1)
    if support_atoms:  # r is zero elsewhere, so only the norm of grad changes
        grad = grad * (residual_sq > 0).to(grad.dtype).unsqueeze(-1)

    def per_graph(values: torch.Tensor) -> torch.Tensor:
        return values.new_zeros(num_graphs).index_add_(0, graph, values)

    inner = per_graph((grad * residual).sum(-1))
    grad_sq = per_graph((grad * grad).sum(-1)) if grad_norm_sq is None else grad_norm_sq
    norms = (grad_sq * per_graph(residual_sq)).sqrt()
    present = per_graph(torch.ones_like(residual_sq)) > 0
    if with_norms:
        return -inner / (norms + _TINY), present, norms
    return -inner / (norms + _TINY), present


class ModulatedLayer(nn.Module):
    """``y = layer(x, *args) + gamma * n(free(z)) [+ gamma_ref * n(reflection(x))]``.

    layer: a strictly equivariant module whose output has ``irreps_out`` (shape [N, dim_out]).
    irreps_free_in: irreps of the free branch's input ``z`` [N, dim] (default ``irreps_in``).
    layer_index: the layer's position among the network's modulated layers (0, 1, ...), as
    given to ``RECMController``; it seeds the free branch, so layers with equal irreps differ.
    n(.) rescales the free output to the RMS of the layer's output, so that gamma alone
    carries the free branch's magnitude. The factor is a running average over training
    batches (buffer ``free_scale``), not the current batch's ratio: a molecule's output must
    not depend on which other molecules share its batch, in training or at inference.

    Subgroup split (modes whose policy has ``subgroup_branches``, i.e. ``recm``): the free
    branch is the *rotation* branch, its residual projected over proper rotations only, with
    state ``state``; a ``ReflectionBranch`` of the layer's input (when the irreps allow one)
    has its own state ``reflection_state`` and its exact residual
    ``(g(x) - rho_out(-I) g(rho_in(-I) x)) / 2``. Files written with one branch per layer
    have no ``reflection.*`` keys: ``align_dropped_branches`` then drops the reflection branch
    and the layer computes exactly what it computed before.

    forward(..., graph=[N] molecule index of each row) makes b per molecule (the absorbing
    test's samples); without it the batch counts as one molecule.

    Held-out scoring (policies with ``scores_heldout``, ``RECMConfig.heldout_every`` > 0): after
    ``hold_out(keys)`` (keys [G], one stable id per molecule of the next training batch, e.g.
    its index in the training set; the controller's ``hold_out`` sets every layer), the
    molecules with ``key % heldout_every == 0`` pass no gradient through either branch (their
    rows of each branch's output are detached) and b is recorded for them only. Without keys
    (or without ``graph``) b is scored on every molecule, as before.
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
        # the subgroup split: fixed at construction (not by whether the branch still lives),
        # so the rotation branch's projection never changes during training
        reads = config.reflection_inputs
        self.split_subgroups = (self.policy.subgroup_branches
                                and ReflectionBranch.has_paths(self.irreps_in, self.irreps_out,
                                                               reads))
        self.reflection: ReflectionBranch | None = None
        if self.split_subgroups:
            self.reflection_state = RECMState(config)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(reflection_branch_seed(config.seed, self.layer_index))
                self.reflection = ReflectionBranch(self.irreps_in, self.irreps_out, reads)
            self.register_buffer("_inversion_in", inversion(self.irreps_in), persistent=False)
            self.register_buffer("_inversion_out", inversion(self.irreps_out), persistent=False)
            # b of the reflection branch is scored on the channels it can write (not
            # persistent: derived from the irreps, so files do not change)
            self.register_buffer("_reflection_support",
                                 reflection_support(branch_inputs(self.irreps_in, reads)[0],
                                                    self.irreps_out),
                                 persistent=False)
        self._regularizer: torch.Tensor | None = None
        self._heldout_keys: torch.Tensor | None = None  # set by hold_out, for one step

    _SCALE_MOMENTUM = 0.05

    def branch_states(self) -> dict[str, RECMState]:
        """``{"rotation": state}`` plus ``"reflection"`` when the layer has that branch
        (with a single branch, "rotation" is the whole free branch)."""
        states = {"rotation": self.state}
        if self.split_subgroups:
            states["reflection"] = self.reflection_state
        return states

    def hold_out(self, keys: torch.Tensor | None) -> None:
        """Stable ids [G] of the molecules of the next training forward (None: forget them);
        see the class docstring."""
        self._heldout_keys = None if keys is None else torch.as_tensor(keys).reshape(-1)

    def _heldout_molecules(self, graph: torch.Tensor | None) -> torch.Tensor | None:
        """bool [G]: the held-out molecules of this training forward, or None when b is
        scored on every molecule."""
        every = self.config.heldout_every
        keys = self._heldout_keys
        if (keys is None or graph is None or every == 0 or not self.policy.scores_heldout
                or not (self.training and torch.is_grad_enabled())):
            return None
        if graph.numel() and int(graph.max()) >= keys.numel():
            raise ValueError(f"hold_out was given {keys.numel()} molecule keys, but the batch "
                             f"has {int(graph.max()) + 1} molecules")
        return (keys.to(graph.device) % every) == 0

    def _probe_molecules(self, heldout: torch.Tensor | None) -> torch.Tensor | None:
        """Which held-out molecules of the current batch are probes (bool [G]): with
        ``RECMConfig.heldout_point`` equivariant, every other held-out molecule
        (``key // heldout_every`` even) sees no branch and is the absorbing test's; None
        otherwise."""
        if heldout is None or self.config.heldout_point != "equivariant":
            return None
        every = self.config.heldout_every
        keys = self._heldout_keys.to(heldout.device)
        return heldout & (torch.div(keys, every, rounding_mode="floor") % 2 == 0)

    def _running_ratio(self, buffer: torch.Tensor, y_eq: torch.Tensor,
                       branch_out: torch.Tensor) -> torch.Tensor:
        """The detached factor of n(.): the running ratio RMS(y_eq) / RMS(branch) kept in
        ``buffer``, updated by training forwards."""
        update = self.training and torch.is_grad_enabled()
        with torch.no_grad():
            batch_ratio = (_rms(y_eq) / (_rms(branch_out) + _TINY)).to(buffer.dtype)
            if update:
                if float(buffer) == 0.0:
                    buffer.copy_(batch_ratio)
                else:
                    buffer.lerp_(batch_ratio, self._SCALE_MOMENTUM)
            elif float(buffer) == 0.0:  # an untrained network: nothing to reuse
                return batch_ratio.to(y_eq.dtype)
            return buffer.to(y_eq.dtype).clone()

    def _normalization(self, y_eq: torch.Tensor, free_out: torch.Tensor) -> torch.Tensor:
        """The detached factor of n(.) of the free branch."""
        return self._running_ratio(self.free_scale, y_eq, free_out)

    # -- group averaging -------------------------------------------------------------------
    def _group_samples(self, dtype, device):
        generator = torch.Generator().manual_seed(
            int(self.config.seed) * 1_000_003 + self.layer_index * 7919 + int(self.state.step))
        # with the split, the reflection branch owns the reflection gap: the rotation
        # branch's residual is its part that proper rotations (alone) do not preserve
        reflections = not self.split_subgroups
        for _ in range(self.config.num_group_samples):
            rotation = random_orthogonal(generator, torch.float64, reflections=reflections)
            d_in = wigner_d(self.irreps_free_in, rotation).to(dtype=dtype, device=device)
            d_out = wigner_d(self.irreps_out, rotation).to(dtype=dtype, device=device)
            yield d_in, d_out

    def projected(self, z: torch.Tensor) -> torch.Tensor:
        """Monte-Carlo Haar projection ``E_g rho_out(g)^-1 f(rho_in(g) z)``, [N, dim_out]
        (g over SO(3) with the subgroup split, else over O(3))."""
        total = None
        for d_in, d_out in self._group_samples(z.dtype, z.device):
            term = self.free(z @ d_in.T) @ d_out  # rho_out(g)^-1 = D_out^T acts as @ D_out
            total = term if total is None else total + term
        return total / self.config.num_group_samples

    def reflection_residual(self, x: torch.Tensor) -> torch.Tensor:
        """The reflection branch's non-equivariant part, exact with one extra evaluation:
        ``(g(x) - rho_out(-I) g(rho_in(-I) x)) / 2`` (inversion commutes with every rotation,
        so this is g minus its O(3) projection when g is rotation-equivariant). [N, dim_out]."""
        sign_in = self._inversion_in.to(x.dtype)
        sign_out = self._inversion_out.to(x.dtype)
        return 0.5 * (self.reflection(x) - self.reflection(x * sign_in) * sign_out)

    # -- forward ---------------------------------------------------------------------------
    def branch_active(self) -> bool:
        if self.free is None or bool(self.state.dropped):
            return False
        return self.training or self.policy.branch_active_in_eval

    def reflection_active(self) -> bool:
        return (self.reflection is not None and not bool(self.reflection_state.dropped)
                and (self.training or self.policy.branch_active_in_eval))

    def _modulated(self, branch: nn.Module, branch_input: torch.Tensor, gamma: torch.Tensor,
                   scale_buffer: torch.Tensor, y_eq: torch.Tensor,
                   heldout_rows: torch.Tensor | None = None,
                   probe_rows: torch.Tensor | None = None):
        """One branch's contribution ``gamma * n(branch(input))`` (value) with the policy's
        gradient rule; rows in ``heldout_rows`` (bool [N]) pass no gradient through the branch
        and rows in ``probe_rows`` (bool [N], a subset) do not see it (value 0).
        Returns (contribution, raw output, n(.)'s factor, n(output))."""
        surrogate = self.policy.surrogate_branch_gradient
        if surrogate and torch.is_grad_enabled():
            # the layers below get the true gradient of gamma * n(f(z)): gamma times the
            # gradient the branch passes back (see the value/gradient split below)
            branch_input = _ScaleGradient.apply(branch_input, gamma.detach())
        out = branch(branch_input)
        scale = self._running_ratio(scale_buffer, y_eq, out)
        normalized = out * scale
        if heldout_rows is not None:
            # same value; no gradient into the branch (or through it) from held-out
            # molecules, so their b is measured on molecules the branch never fitted
            normalized = torch.where(heldout_rows.unsqueeze(-1), normalized.detach(), normalized)
        if probe_rows is not None:
            # probes see no branch: the network is exactly equivariant on them, and their b
            # is the loss's derivative along the branch at gamma = 0
            normalized = torch.where(probe_rows.unsqueeze(-1), torch.zeros_like(normalized),
                                     normalized)
        if surrogate:
            # value: gamma n(f); gradient into the branch's own parameters: as if gamma were 1.
            # The branch keeps learning the direction it would take at full use while gamma
            # is small, so b (its alignment with the descent direction) stays informative:
            # without this a branch switched off early never learns, b stays <= 0 and gamma
            # never recovers. Only the branch gets this surrogate: the rest of the network is
            # trained on the loss as computed (gradient scaling of the input above).
            contribution = gamma * normalized.detach() + (normalized - normalized.detach())
        else:
            contribution = gamma * normalized
        return contribution, out, scale, normalized

    def forward(self, x: torch.Tensor, *args, free_input: torch.Tensor | None = None,
                graph: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        y_eq = self.layer(x, *args, **kwargs)
        self._regularizer = None
        rotation_on, reflection_on = self.branch_active(), self.reflection_active()
        if not (rotation_on or reflection_on):
            return y_eq
        y = y_eq
        training = self.training and torch.is_grad_enabled()
        heldout = self._heldout_molecules(graph)
        heldout_rows = None if heldout is None else heldout[graph]
        probe = self._probe_molecules(heldout)
        probe_rows = None if probe is None else probe[graph]
        signals = []  # (state, residual, n(output), support) per live branch, for the hook
        if rotation_on:
            z = x if free_input is None else free_input
            gamma = self.state.gamma.to(y_eq.dtype)
            contribution, free_out, scale, normalized = self._modulated(
                self.free, z, gamma, self.free_scale, y_eq, heldout_rows, probe_rows)
            y = y + contribution
            if training and self.policy.regularization_weight(self.config) > 0:
                # penalty on the non-equivariant part, relative so the branch's scale is
                # irrelevant
                residual = free_out - self.projected(z)
                self._regularizer = self.policy.penalty(free_out, residual, gamma, scale, y)
            if training and self.policy.collects_signals:
                with torch.no_grad():
                    # the free MLP can write every output channel: its support is all
                    signals.append((self.state, (free_out - self.projected(z)).detach(),
                                    normalized.detach(), None, None))
        if reflection_on:
            gamma = self.reflection_state.gamma.to(y_eq.dtype)
            contribution, _, _, normalized = self._modulated(
                self.reflection, x, gamma, self.reflection.scale, y_eq, heldout_rows,
                probe_rows)
            y = y + contribution
            if training and self.policy.collects_signals:
                with torch.no_grad():
                    support = (self._reflection_support if self.config.score_on_support
                               else None)
                    # the span score needs the inputs the branch reads, to know what it
                    # could write
                    span_input = (x.detach() if self.config.reflection_score == "span"
                                  else None)
                    signals.append((self.reflection_state,
                                    self.reflection_residual(x.detach()).detach(),
                                    normalized.detach(), support, span_input))
        if signals and y.requires_grad:
            keys = self._heldout_keys
            every = self.config.heldout_every
            num_graphs = None if heldout is None else heldout.numel()
            support_atoms = self.config.support_atoms
            weighted = self.config.b_weighting == "magnitude"

            def collect(grad: torch.Tensor) -> None:
                with torch.no_grad():
                    for state, residual, direction, support, span_input in signals:
                        rows, count = molecule_index(graph, grad.shape[0], num_graphs,
                                                     grad.device)
                        followable = (None if span_input is None else
                                      self.reflection.followable_sq(span_input, grad, rows,
                                                                    count))
                        b, present, norms = per_molecule_b(
                            grad, residual, rows, count, support, support_atoms,
                            followable, with_norms=True)
                        dgamma = (grad * direction).sum().to(torch.float64)
                        if heldout is None:
                            state.record_signals(b[present], dgamma, None,
                                                 norms[present] if weighted else None)
                            continue
                        tested = present & (heldout if probe is None else probe)
                        clusters = heldout_cluster(keys.to(tested.device)[tested], every)
                        tested_weights = norms[tested] if weighted else None
                        if probe is not None:
                            # the update follows the other held-out molecules at the
                            # current gamma; the absorbing test the probes at gamma = 0
                            updating = present & heldout & ~probe
                            state.record_signals(
                                b[updating], dgamma, None,
                                norms[updating] if weighted else None,
                                tested=(b[tested], clusters, tested_weights))
                        else:  # test and update: held-out molecules at the current gamma
                            state.record_signals(b[tested], dgamma, clusters, tested_weights)

            y.register_hook(collect)
        return y

    def regularizer(self) -> torch.Tensor | None:
        """The last training forward's penalty (None when there is none)."""
        return self._regularizer

    def drop_branch(self) -> None:
        """Remove the free (rotation) branch for good: with no reflection branch left the
        layer is then exactly ``layer``."""
        self.free = None
        self.state.dropped.fill_(True)
        self.state.gamma.zero_()

    def drop_reflection_branch(self) -> None:
        """Remove the reflection branch for good (its state stays, dropped, gamma 0)."""
        self.reflection = None
        if self.split_subgroups:
            self.reflection_state.dropped.fill_(True)
            self.reflection_state.gamma.zero_()
