"""The one object training code talks to about RECM: ``controller_of(net)``."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from conformer.recm import modes
from conformer.recm.config import RECMConfig
from conformer.recm.layer import HELDOUT_CLUSTERS, ModulatedLayer, RECMState, SignalSummary

AllReduce = Callable[[torch.Tensor], object]
"""Sums a tensor in place over every process (``torch.distributed.all_reduce``'s contract)."""


class RECMController(nn.Module):
    """Updates, synchronises and reports the state of a network's modulated layers.

    The layers are referenced, not owned: each layer registers its own ``RECMState`` (keys
    ``<layer>.state.*``), so the controller has no state of its own. It is still a module so
    that files written when it held the states (``recm.states.<i>.*``) load: see
    ``_load_from_state_dict``. A controller without layers is a no-op (``controller_of``).

    Training loop contract, per optimiser step: ``hold_out(keys)`` (optional, stable ids of
    the batch's molecules: makes b unbiased, see ``RECMConfig.heldout_every``), forward, ``loss + regularization_loss()``,
    backward (each layer's hook records its signals), ``optimizer.step()``, under DDP
    ``synchronize_signals()``, then ``after_optimizer_step(progress)``; ``log_dict()`` and
    ``gammas()`` at any time. What each step does depends on the mode
    (``conformer.recm.modes``).
    """

    def __init__(self, layers: list[ModulatedLayer], config: RECMConfig):
        super().__init__()
        self.config = config
        self.policy = config.policy
        for index, layer in enumerate(layers):
            if layer.layer_index != index:
                raise ValueError(f"modulated layer {index} was built with layer_index="
                                 f"{layer.layer_index}; pass layer_index={index} (it seeds the "
                                 "free branch and the group samples of that layer)")
        object.__setattr__(self, "layers", tuple(layers))  # owned by the network

    @property
    def mode(self) -> str:
        return self.config.mode

    @property
    def states(self) -> tuple[RECMState, ...]:
        """Every layer's (rotation or only) branch state, in layer order."""
        return tuple(layer.state for layer in self.layers)

    def branch_states(self) -> list[tuple[int, str, RECMState]]:
        """(layer index, branch name, state) of every branch: "rotation" for each layer, and
        "reflection" for the layers that have one (``recm`` mode)."""
        return [(index, name, state) for index, layer in enumerate(self.layers)
                for name, state in layer.branch_states().items()]

    def __len__(self) -> int:
        return len(self.layers)

    # -- per optimiser step ----------------------------------------------------------------
    def hold_out(self, keys) -> None:
        """Name the molecules of the next training forward: ``keys`` [G] integers, one stable
        id per molecule in batch order (the same molecule always gets the same key, e.g. its
        index in the training set). Molecules with ``key % heldout_every == 0`` are then held
        out of every branch's gradient and b is scored on them alone (``recm`` mode; other
        modes, and ``heldout_every`` 0, ignore the keys). Forgotten after the optimiser step.
        """
        if keys is not None:
            keys = torch.as_tensor(keys)
            if keys.dim() != 1 or keys.dtype.is_floating_point or keys.dtype == torch.bool:
                raise ValueError("hold_out: keys must be a 1-D integer tensor (one id per "
                                 f"molecule), got {keys.dtype} of shape {tuple(keys.shape)}")
            if keys.numel() and int(keys.min()) < 0:
                raise ValueError("hold_out: keys must be non-negative")
        for layer in self.layers:
            layer.hold_out(keys)

    def regularization_loss(self) -> torch.Tensor:
        """Weighted sum of the layers' penalties from the last training forward: a 0-dim
        tensor, 0 when the mode has no penalty."""
        weight = self.policy.regularization_weight(self.config)
        terms = [layer.regularizer() for layer in self.layers]
        terms = [t for t in terms if t is not None]
        if not terms or weight == 0:
            reference = self.states[0].gamma if self.layers else torch.tensor(0.0)
            return torch.zeros((), dtype=reference.dtype, device=reference.device)
        return weight * torch.stack(terms).sum()

    @torch.no_grad()
    def synchronize_signals(self, all_reduce: AllReduce | None = None,
                            process_group=None) -> None:
        """Replace each branch's pending signals by their summary over every process.

        Every rank then applies the same update to the same state, so gammas, statistics and
        absorbing decisions stay identical (a branch dropped on one rank only would desync the
        replicas' parameters). b is pooled over every rank's molecules (count, mean, mean
        square); dJ/dgamma is the mean of the ranks' means, over the ranks that recorded one.
        all_reduce: sums a tensor in place across the processes (default:
        ``torch.distributed.all_reduce`` over ``process_group``, nothing to do when
        torch.distributed is not initialised or has one process). Every rank must call it.
        """
        if all_reduce is None:
            all_reduce = _distributed_all_reduce(process_group)
            if all_reduce is None:
                return
        states = [state for _, _, state in self.branch_states()]
        if not states:
            return
        # [branch, (b count, weighted b sum, weighted b square sum, dJ/dgamma local mean,
        #           1 if it has one, 1 if b is held-out, weight sum, then per cluster:
        #           weighted b sums, weights)]
        clusters = HELDOUT_CLUSTERS
        first = 7
        totals = torch.zeros(len(states), first + 2 * clusters, dtype=torch.float64,
                             device=states[0].gamma.device)
        for index, state in enumerate(states):
            summary, dgamma = state.take_summary()
            if summary is not None:
                weight = summary.total_weight
                totals[index, 0] = summary.count
                totals[index, 1] = weight * summary.mean
                totals[index, 2] = weight * summary.sq_mean
                totals[index, 6] = weight
                if summary.heldout:
                    totals[index, 5] = 1.0
                    totals[index, first:first + clusters] = summary.cluster_sums
                    totals[index, first + clusters:] = summary.cluster_counts
            if dgamma is not None:
                totals[index, 3] = dgamma
                totals[index, 4] = 1.0
        all_reduce(totals)
        for index, state in enumerate(states):
            row = totals[index].cpu()
            count, total, total_sq, dgamma_sum, ranks, heldout, weight = \
                row[:first].tolist()
            sums = row[first:first + clusters].clone() if heldout > 0 else None
            counts = row[first + clusters:].clone() if heldout > 0 else None
            if count > 0 and weight > 0:
                state.pending_summary = SignalSummary(int(round(count)), total / weight,
                                                      total_sq / weight, sums, counts, weight)
            elif sums is not None:  # only molecules of the absorbing test this step
                state.pending_summary = SignalSummary(0, 0.0, 0.0, sums, counts, None)
            else:
                state.pending_summary = None
            state.pending_dgamma_mean = dgamma_sum / ranks if ranks > 0 else None

    @torch.no_grad()
    def after_optimizer_step(self, progress: float) -> None:
        """Advance every branch's state by one optimiser step; progress in [0, 1] of
        training."""
        for layer in self.layers:
            layer.hold_out(None)
        for _, _, state in self.branch_states():
            summary, dgamma = state.take_summary()
            state.step += 1
            if bool(state.dropped):
                continue
            self.policy.update(state, self.config, float(progress), summary, dgamma)

    # -- optimisation ------------------------------------------------------------------------
    def surrogate_parameters(self) -> list[nn.Parameter]:
        """The parameters of the branches trained by the surrogate gradient (as if gamma were
        1; ``recm`` mode, see the package docstring), of every live branch; [] in other
        modes, where a branch is an ordinary part of the network."""
        if not self.policy.surrogate_branch_gradient:
            return []
        return [parameter for layer in self.layers
                for branch in (layer.free, layer.reflection) if branch is not None
                for parameter in branch.parameters()]

    def clip_grad_norm_(self, parameters, max_norm: float) -> None:
        """Clip the gradients of ``parameters`` to L2 norm ``max_norm``, the surrogate
        branches' (``surrogate_parameters``) apart from the rest.

        Why apart: the surrogate gradient is the branch's gradient at gamma = 1, 2-100x the
        rest of the network's norm on the chirality preset (median 1,049 against 9.3 over the
        first 50 steps, 13 against 6 at step 200), so one clip over everything shrank the
        trunk's step by that ratio, varying from step to step, for branches that contribute
        nothing to the output at gamma = 0."""
        surrogate = {id(p) for p in self.surrogate_parameters()}
        parameters = [p for p in parameters if p.grad is not None]
        rest = [p for p in parameters if id(p) not in surrogate]
        branches = [p for p in parameters if id(p) in surrogate]
        for group in (rest, branches):
            if group:
                torch.nn.utils.clip_grad_norm_(group, max_norm)

    # -- reporting -------------------------------------------------------------------------
    def upper_confidence_fixed_point(self, state: RECMState) -> float:
        """gamma_max * (mean(b) + z * standard error): an upper bound on the fixed point."""
        return modes.upper_confidence_fixed_point(state, self.config)

    def gammas(self) -> list[float]:
        """Per layer, the gamma of its rotation (or only) branch."""
        return [float(state.gamma) for state in self.states]

    def branch_gammas(self) -> dict[str, list[float]]:
        """``{"rotation": [per layer], "reflection": [per layer]}``; a layer without a
        reflection branch (any mode but ``recm``, or no path for one) reports 0."""
        reflection = [float(layer.reflection_state.gamma) if layer.split_subgroups else 0.0
                      for layer in self.layers]
        return {"rotation": self.gammas(), "reflection": reflection}

    def branch_dropped(self) -> dict[str, list[bool]]:
        """Like ``branch_gammas``: whether each branch is absorbed (no branch: True)."""
        reflection = [bool(layer.reflection_state.dropped) if layer.split_subgroups else True
                      for layer in self.layers]
        return {"rotation": [bool(state.dropped) for state in self.states],
                "reflection": reflection}

    def log_dict(self) -> dict[str, float]:
        """Per-branch gamma, dropped flag and the mode's own values (b statistics for recm,
        the dual for ace), named ``recm/<name>_<layer>`` for the rotation (or only) branch
        and ``recm/reflection_<name>_<layer>`` for the reflection branch; empty without
        layers."""
        out: dict[str, float] = {}
        for index, branch, state in self.branch_states():
            prefix = "recm/" if branch == "rotation" else f"recm/{branch}_"
            out[f"{prefix}gamma_{index}"] = float(state.gamma)
            out[f"{prefix}dropped_{index}"] = float(state.dropped)
            for name, value in self.policy.log_values(state, self.config).items():
                out[f"{prefix}{name}_{index}"] = value
        return out

    # -- old files ---------------------------------------------------------------------------
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # files written before the states moved onto their layers: ``<prefix>states.<i>.<name>``
        legacy = prefix + "states."
        for key in [k for k in state_dict if k.startswith(legacy)]:
            value = state_dict.pop(key)
            index, _, name = key[len(legacy):].partition(".")
            if not index.isdigit() or int(index) >= len(self.layers) \
                    or name not in RECMState.BUFFERS:
                unexpected_keys.append(key)
                continue
            getattr(self.layers[int(index)].state, name).copy_(value)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


def _distributed_all_reduce(process_group=None) -> AllReduce | None:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    if dist.get_world_size(process_group) == 1:
        return None
    return lambda tensor: dist.all_reduce(tensor, group=process_group)


def controller_of(net: nn.Module) -> RECMController:
    """The RECM controller of ``net`` (the first ``RECMController`` among its modules), or a
    controller without layers, on which every call is a no-op, for a network without one."""
    for module in net.modules():
        if isinstance(module, RECMController):
            return module
    return RECMController([], RECMConfig(mode="equivariant"))
