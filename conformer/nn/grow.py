"""Start a larger denoiser from a trained smaller one, computing the same function.

``model.init_grow``: a run whose network is an existing model's network with inputs or read-outs
added (``chirality_features``, ``cip_rank_edges``, ``cip_rank_out_edges``, ``parity_readout``)
starts from that model's weights instead of from scratch. Every weight the smaller network has
is copied; every weight it lacks is set so that the larger network computes exactly what the
smaller one did, and training then learns to use the new inputs:

- an e3nn ``o3.Linear`` or ``TensorProduct`` whose input irreps gained entries (appended at the
  end, so the old instructions are a prefix of the new ones) keeps the old paths and gets zero
  weights on the new ones; e3nn normalises each path by the fan-in of its output, which the new
  paths change, so each old weight is rescaled by old / new path weight;
- the radial network that produces a tensor product's weights keeps its hidden layers and the
  old paths' output columns; the new paths' columns stay as initialised, so their messages are
  not zero (the ``o3.Linear`` that reads them starts at zero: one of the two must not be zero,
  or neither gets a gradient);
- added edge-type embeddings (CIP ranks) are zero, so the edge features are unchanged; the
  parity read-out's edge weights are zero, so it adds nothing;
- RECM branches and their states start afresh (the smaller model's were absorbed or are of
  another shape): the grown network's trunk is the smaller model, the branches are new.

Anything else that differs (channel counts, layers, cutoffs, another preset) is an error: the
networks are then not one grown from the other.
"""

from __future__ import annotations

import dataclasses

import torch
from e3nn import nn as e3nn_nn
from e3nn import o3

from conformer.errors import UserInputError

# DenoiserConfig fields a grown network may set differently from the network it starts from.
# bond_hops is not function-preserving: hop edges start as radius edges (Denoiser docstring).
GROWABLE_FIELDS = ("chirality_features", "cip_rank_edges", "cip_rank_out_edges",
                   "parity_readout", "bond_hops")
_ZERO_INIT_MODULES = ("cip_rank_embedding", "cip_rank_out_embedding")


def _is_branch(name: str) -> bool:
    parts = name.split(".")
    return any(p in ("free", "reflection", "state", "reflection_state") for p in parts)


def check_growable(small_config, large_config) -> None:
    """UserInputError unless ``large_config`` differs from ``small_config`` (two
    ``DenoiserConfig``) only in ``GROWABLE_FIELDS``."""
    small, large = dataclasses.asdict(small_config), dataclasses.asdict(large_config)
    other = sorted(k for k in small if k not in GROWABLE_FIELDS and small[k] != large.get(k))
    if other:
        raise UserInputError("model.init_grow: the network to start from differs in "
                             + ", ".join(f"{k} ({small[k]!r} there, {large.get(k)!r} here)"
                                         for k in other)
                             + f"; only {', '.join(GROWABLE_FIELDS)} may differ")


def _prefix_instructions(small, large, fields: tuple[str, ...], where: str) -> list:
    """Pairs (old instruction, new instruction) for the old instructions, checking that they
    are the first ones of the new module."""
    def key(instruction):
        return tuple(getattr(instruction, f) for f in fields)

    old, new = small.instructions, large.instructions
    if [key(i) for i in old] != [key(i) for i in new[:len(old)]]:
        raise UserInputError(f"model.init_grow: {where}: the new paths are not appended after "
                             "the old ones (the networks are not one grown from the other)")
    return list(zip(old, new[:len(old)], strict=True))


def _grow_linear(small: o3.Linear, large: o3.Linear, where: str) -> None:
    if small.irreps_out != large.irreps_out or \
            small.irreps_in != large.irreps_in[:len(small.irreps_in)]:
        raise UserInputError(f"model.init_grow: {where}: irreps {small.irreps_in} -> "
                             f"{small.irreps_out} cannot grow into {large.irreps_in} -> "
                             f"{large.irreps_out}")
    pairs = _prefix_instructions(small, large, ("i_in", "i_out", "path_shape"), where)
    weight = torch.zeros_like(large.weight)
    offset = 0
    for old, new in pairs:
        size = old.path_shape[0] * old.path_shape[1]
        weight[offset:offset + size] = small.weight[offset:offset + size] * (
            old.path_weight / new.path_weight)
        offset += size
    large.weight.copy_(weight)
    if small.bias.shape != large.bias.shape:
        raise UserInputError(f"model.init_grow: {where}: biases of another shape")
    large.bias.copy_(small.bias)


def _grow_tensor_product(small: o3.TensorProduct, large: o3.TensorProduct,
                         small_radial: e3nn_nn.FullyConnectedNet,
                         large_radial: e3nn_nn.FullyConnectedNet, where: str) -> None:
    """External-weight tensor product: the old paths' columns of the radial network's last
    layer are copied, rescaled by old / new path weight; the new paths keep their fresh
    columns (the linear map that reads their messages starts at zero instead: were both zero,
    neither would get a gradient)."""
    if small.irreps_in2 != large.irreps_in2 or \
            small.irreps_in1 != large.irreps_in1[:len(small.irreps_in1)]:
        raise UserInputError(f"model.init_grow: {where}: the tensor product's inputs cannot grow")
    pairs = _prefix_instructions(small, large, ("i_in1", "i_in2", "connection_mode",
                                                "has_weight", "path_shape"), where)
    small_layers = [m for m in small_radial.children()]
    large_layers = [m for m in large_radial.children()]
    if len(small_layers) != len(large_layers):
        raise UserInputError(f"model.init_grow: {where}: radial networks of other depths")
    for old_layer, new_layer in zip(small_layers[:-1], large_layers[:-1], strict=True):
        new_layer.weight.copy_(old_layer.weight)
    last_old, last_new = small_layers[-1].weight, large_layers[-1].weight
    column = last_new.detach().clone()
    offset = 0
    for old, new in pairs:
        size = 1
        for extent in old.path_shape:
            size *= extent
        if old.has_weight:
            column[:, offset:offset + size] = last_old[:, offset:offset + size] * (
                old.path_weight / new.path_weight)
            offset += size
    last_new.copy_(column)


def grow_into(large: torch.nn.Module, small: torch.nn.Module) -> list[str]:
    """Set ``large``'s weights from ``small`` (two ``Denoiser``; module docstring) in place.
    Returns the names of the parameters that start at zero or afresh (new inputs, read-outs,
    RECM branches)."""
    check_growable(small.config, large.config)
    small_modules = dict(small.named_modules())
    done: set[str] = set()
    fresh: list[str] = []
    with torch.no_grad():
        for name, module in large.named_modules():
            if _is_branch(name):
                continue
            old = small_modules.get(name)
            if isinstance(module, o3.Linear) and isinstance(old, o3.Linear):
                _grow_linear(old, module, name)
                done.update(f"{name}.{p}" for p, _ in module.named_parameters())
            elif isinstance(module, o3.TensorProduct) and not module.internal_weights \
                    and name.endswith(".tp") and isinstance(old, o3.TensorProduct):
                parent = name[:-len(".tp")]
                radial_name = f"{parent}.radial"
                _grow_tensor_product(old, module, small_modules[radial_name],
                                     large.get_submodule(radial_name), name)
                done.update(f"{radial_name}.{p}" for p, _ in
                            large.get_submodule(radial_name).named_parameters())
            elif old is None and name.split(".")[-1] in _ZERO_INIT_MODULES:
                for p_name, parameter in module.named_parameters():
                    parameter.zero_()
                    done.add(f"{name}.{p_name}")
                    fresh.append(f"{name}.{p_name}")
            elif old is None and name.endswith("edge_weights") and \
                    isinstance(module, e3nn_nn.FullyConnectedNet):
                # the parity read-out: zero edge weights, so it adds nothing at first
                last = [m for m in module.children()][-1]
                last.weight.zero_()
                done.update(f"{name}.{p}" for p, _ in module.named_parameters())
                fresh.append(f"{name} (last layer zero)")
        small_state = small.state_dict()
        for name, parameter in large.named_parameters():
            if name in done or _is_branch(name):
                if _is_branch(name):
                    fresh.append(name)
                continue
            if name not in small_state:
                if name.startswith("hop_embedding") and "radius_embedding" in small_state:
                    parameter.copy_(small_state["radius_embedding"].expand_as(parameter))
                    continue
                raise UserInputError(f"model.init_grow: {name} has no counterpart in the "
                                     "network to start from and no rule to start it from zero")
            if small_state[name].shape != parameter.shape:
                raise UserInputError(f"model.init_grow: {name} has shape "
                                     f"{tuple(small_state[name].shape)} there and "
                                     f"{tuple(parameter.shape)} here")
            parameter.copy_(small_state[name])
    return fresh
