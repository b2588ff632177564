"""Turn a trained modulated network into its deployable form."""

from __future__ import annotations

import copy

from torch import nn

from conformer.recm.layer import ModulatedLayer


def export(net: nn.Module) -> nn.Module:
    """A copy of ``net`` with every dropped or zero-coefficient free branch removed.

    Per mode (``ModePolicy.keeps_branch_at_export``): ``scheduled`` drops every branch
    (section 2); ``ace`` truncates branches with gamma under ``ace_truncation`` (gamma only
    reaches zero asymptotically); ``recm`` drops absorbed branches and branches whose gamma is
    exactly 0; ``unconstrained`` keeps all. A kept branch gets ``RECMState.export_gamma``: in
    ``recm`` mode the running mean of gamma over the last ``stats_window`` steps (one step's
    gamma scatters around its fixed point; the exported weights are an average too), judged
    by the same rule.
    A layer without a branch is exactly its equivariant block.
    """
    for module in net.modules():  # the last forward's penalty is part of an autograd graph,
        if isinstance(module, ModulatedLayer):  # which deepcopy cannot copy
            module._regularizer = None
    exported = copy.deepcopy(net)
    for module in exported.modules():
        if not isinstance(module, ModulatedLayer):
            continue
        if module.free is not None:
            gamma = module.state.export_gamma()
            if bool(module.state.dropped) or not module.policy.keeps_branch_at_export(
                    gamma, module.config):
                module.drop_branch()
            else:
                module.state.gamma.fill_(gamma)
        if module.reflection is not None:
            gamma = module.reflection_state.export_gamma()
            if bool(module.reflection_state.dropped) or not \
                    module.policy.keeps_branch_at_export(gamma, module.config):
                module.drop_reflection_branch()
            else:
                module.reflection_state.gamma.fill_(gamma)
    return exported


def align_dropped_branches(net: nn.Module, state_dict: dict, prefix: str = "") -> int:
    """Drop the free and reflection branches of ``net`` that ``state_dict`` does not have
    (absorbed layers, an exported model, or a file written before reflection branches
    existed), so that the state dict loads strictly. Returns how many.

    prefix: the key prefix of ``net``'s entries in ``state_dict`` (``"net."`` in a training
    checkpoint, ``""`` in a model file).
    """
    dropped = 0
    for name, module in net.named_modules():
        if isinstance(module, ModulatedLayer) and module.free is not None:
            branch = f"{prefix}{name}.free." if name else f"{prefix}free."
            if not any(key.startswith(branch) for key in state_dict):
                module.drop_branch()
                dropped += 1
        if isinstance(module, ModulatedLayer) and module.reflection is not None:
            branch = f"{prefix}{name}.reflection." if name else f"{prefix}reflection."
            if not any(key.startswith(branch) for key in state_dict):
                module.drop_reflection_branch()
                dropped += 1
    return dropped
