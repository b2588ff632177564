"""Plain-torch graph helpers (no compiled extensions): scatter sums and radius graphs."""

from __future__ import annotations

import torch


def scatter_sum(values: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """Sum rows of ``values`` [E, ...] into ``size`` rows by ``index`` [E]: [size, ...]."""
    out = values.new_zeros((size,) + values.shape[1:])
    return out.index_add_(0, index, values)


def scatter_mean(values: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """Mean of rows of ``values`` per ``index`` (empty groups give 0): [size, ...]."""
    total = scatter_sum(values, index, size)
    count = scatter_sum(torch.ones_like(index, dtype=values.dtype), index, size).clamp(min=1)
    return total / count.view((size,) + (1,) * (values.dim() - 1))


def intra_graph_pairs(batch: torch.Tensor, num_graphs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All ordered pairs (i, j), i != j, of atoms in the same graph.

    batch: [N] graph index per atom, contiguous and sorted (as collate concatenates).
    Returns (source, target), each [P] with P = sum_g n_g (n_g - 1). Cost O(sum_g n_g^2),
    not O(N^2), so a batch of small molecules stays cheap.
    """
    counts = torch.bincount(batch, minlength=num_graphs)
    starts = torch.cumsum(counts, 0) - counts
    per_atom = counts[batch]  # partners (incl. itself) of each atom
    source = torch.repeat_interleave(torch.arange(batch.numel(), device=batch.device), per_atom)
    offsets = torch.cumsum(per_atom, 0) - per_atom
    local = torch.arange(source.numel(), device=batch.device) - torch.repeat_interleave(
        offsets, per_atom)
    target = starts[batch[source]] + local
    keep = source != target
    return source[keep], target[keep]


def radius_graph(pos: torch.Tensor, batch: torch.Tensor, num_graphs: int,
                 cutoff: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Ordered pairs of distinct atoms of the same graph closer than ``cutoff`` (Angstrom).

    pos: [N, 3]; batch: [N] sorted graph indices. Returns (source, target), each [E].
    """
    source, target = intra_graph_pairs(batch, num_graphs)
    with torch.no_grad():
        close = (pos[source] - pos[target]).pow(2).sum(-1) < cutoff * cutoff
    return source[close], target[close]
