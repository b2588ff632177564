"""Plain-torch graph helpers (no compiled extensions): all-pairs and radius graphs.

Scatters (sums and means over edges or atoms) come from ``torch_geometric.utils.scatter``, whose
sum and mean run on plain torch; ``torch_geometric.nn.radius_graph`` needs the compiled
torch-cluster, so the radius graph stays here."""

from __future__ import annotations

import torch


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
