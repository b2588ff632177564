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
    exactly 0; ``unconstrained`` keeps all.
    A layer without a branch is exactly its equivariant block.
    """
    for module in net.modules():  # the last forward's penalty is part of an autograd graph,
        if isinstance(module, ModulatedLayer):  # which deepcopy cannot copy
            module._regularizer = None
    exported = copy.deepcopy(net)
    for module in exported.modules():
        if not isinstance(module, ModulatedLayer) or module.free is None:
            continue
        if bool(module.state.dropped) or not module.policy.keeps_branch_at_export(
                float(module.state.gamma), module.config):
            module.drop_branch()
    return exported
