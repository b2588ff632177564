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


def bond_hop_pairs(edge_index: torch.Tensor, num_atoms: int, max_hops: int
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ordered pairs of atoms 2 to ``max_hops`` bonds apart (shortest path through bonds).

    edge_index: [2, E] bonds, both directions present (as the batches hold them); pairs never
    cross molecules, since bonds do not. Bonded pairs and an atom with itself are left out.
    Returns (source [P], target [P], hops [P] in 2..max_hops), sorted by hops then pair. Cost
    O(P x degree): a breadth-first step from each pair's target per hop.
    """
    device = edge_index.device
    empty = torch.zeros(0, dtype=torch.long, device=device)
    if max_hops < 2 or edge_index.numel() == 0:
        return empty, empty, empty
    order = torch.argsort(edge_index[0] * num_atoms + edge_index[1])
    bond_source, bond_target = edge_index[0][order], edge_index[1][order]
    degree = torch.bincount(bond_source, minlength=num_atoms)
    row_start = torch.cumsum(degree, 0) - degree
    reached = torch.cat([bond_source * num_atoms + bond_target,
                         torch.arange(num_atoms, device=device) * (num_atoms + 1)])
    frontier_source, frontier_target = bond_source, bond_target
    sources, targets, hops = [], [], []
    for hop in range(2, max_hops + 1):
        counts = degree[frontier_target]
        walk = torch.repeat_interleave(torch.arange(frontier_target.numel(), device=device),
                                       counts)
        offsets = torch.cumsum(counts, 0) - counts
        step = torch.arange(walk.numel(), device=device) - offsets[walk]
        next_source = frontier_source[walk]
        next_target = bond_target[row_start[frontier_target[walk]] + step]
        pair_id = torch.unique(next_source * num_atoms + next_target)
        pair_id = pair_id[~torch.isin(pair_id, reached)]
        frontier_source, frontier_target = pair_id // num_atoms, pair_id % num_atoms
        reached = torch.cat([reached, pair_id])
        sources.append(frontier_source)
        targets.append(frontier_target)
        hops.append(torch.full_like(frontier_source, hop))
    return torch.cat(sources), torch.cat(targets), torch.cat(hops)
