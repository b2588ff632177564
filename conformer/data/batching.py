"""Model batches from molecule graphs: the one batch builder of training and generation.

A batch is a torch_geometric ``Batch`` of ``conformer.data.records.MoleculeGraph`` items (fields
x, z, edge_index, edge_attr, pos, batch; ``conformer.data.keys`` lists shapes and dtypes), so the
denoiser takes what any PyG loader makes of the prepared records. Lightning-free on purpose:
generation builds its batches here too, so sampling needs no training code.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch_geometric.data import Batch

from conformer.data import keys
from conformer.data.records import MoleculeGraph, molecule_graph


def collate_molecules(graphs: Sequence[MoleculeGraph]) -> Batch:
    """Concatenate molecule graphs (each with pos [N, 3], Angstrom) into one PyG ``Batch``.

    ``Batch.from_data_list``: edge_index is offset into the concatenated atoms; ``batch`` [N]
    gives each atom its molecule's index; ``num_graphs`` is ``len(graphs)``.
    """
    return Batch.from_data_list(list(graphs))


def copies_batch(features: Mapping, copies: int, device: torch.device | str = "cpu") -> Batch:
    """A batch of ``copies`` copies of one molecule's graph on ``device``, for sampling.

    features: the molecule's graph (``conformer.data.features.featurize_mol``); pos is zeros
    [copies x N, 3] float32 (the sampler draws its own starting coordinates).
    """
    n = features[keys.ATOMIC_NUMBERS].shape[0]
    graph = molecule_graph(features, pos=torch.from_numpy(np.zeros((n, 3), dtype=np.float32)))
    return collate_molecules([graph] * copies).to(device)


def with_positions(batch: Batch, pos: torch.Tensor) -> Batch:
    """``batch`` with ``pos`` [N, 3] in place of its positions; ``batch`` itself is unchanged
    (a shallow copy: the other tensors are shared, not copied)."""
    out = copy.copy(batch)
    out.pos = pos
    return out
