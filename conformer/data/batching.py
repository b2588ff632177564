"""Model batches from molecule graphs: the one batch builder of training and generation.

Lightning-free on purpose: generation builds its batches here too, so sampling needs no
training code. Keys, shapes and dtypes of items and batches are listed in ``conformer.data.keys``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from conformer.data import keys


def collate_molecules(items: Sequence[dict]) -> dict:
    """Concatenate molecules into one batch dict (keys and shapes in ``conformer.data.keys``).

    items: per molecule, numpy arrays ATOM_FEATURES [N, F], ATOMIC_NUMBERS [N],
    BOND_INDEX [2, E], BOND_FEATURES [E, F'] and POS [N, 3] (Angstrom). Bond indices are
    offset into the concatenated atoms; BATCH gives each atom its molecule's index.
    """
    offsets = np.cumsum([0] + [len(item[keys.ATOMIC_NUMBERS]) for item in items[:-1]])
    batch = {
        keys.ATOM_FEATURES: torch.from_numpy(
            np.concatenate([item[keys.ATOM_FEATURES] for item in items])).long(),
        keys.ATOMIC_NUMBERS: torch.from_numpy(
            np.concatenate([item[keys.ATOMIC_NUMBERS] for item in items])).long(),
        keys.BOND_INDEX: torch.from_numpy(np.concatenate(
            [item[keys.BOND_INDEX] + offset for item, offset in zip(items, offsets, strict=True)],
            axis=1)).long(),
        keys.BOND_FEATURES: torch.from_numpy(
            np.concatenate([item[keys.BOND_FEATURES] for item in items])).long(),
        keys.POS: torch.from_numpy(np.concatenate([item[keys.POS] for item in items])).float(),
        keys.BATCH: torch.from_numpy(np.concatenate(
            [np.full(len(item[keys.ATOMIC_NUMBERS]), k) for k, item in enumerate(items)])).long(),
        keys.NUM_GRAPHS: len(items),
    }
    if all(keys.CIP_NEIGHBOUR_RANK in item for item in items):  # per edge, like BOND_FEATURES
        batch[keys.CIP_NEIGHBOUR_RANK] = torch.from_numpy(
            np.concatenate([item[keys.CIP_NEIGHBOUR_RANK] for item in items])).long()
    return batch


def copies_batch(features: dict, copies: int, device: torch.device | str = "cpu") -> dict:
    """A batch of ``copies`` copies of one molecule's graph on ``device``, for sampling.

    features: the molecule's graph (``conformer.data.features.featurize_mol``); POS is zeros
    [copies x N, 3] (the sampler draws its own starting coordinates).
    """
    n = features[keys.ATOMIC_NUMBERS].shape[0]
    item = {**features, keys.POS: np.zeros((n, 3), dtype=np.float32)}
    return batch_to(collate_molecules([item] * copies), device)


def batch_to(batch: dict, device: torch.device | str) -> dict:
    """``batch`` with every tensor moved to ``device`` (NUM_GRAPHS stays an int)."""
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
