"""Test helpers for equivariance: the checker itself is :mod:`conformer.equivariance` (the
experiments report with it too); this module adds the single-thread fixture body."""

from __future__ import annotations

import torch

from conformer.equivariance import POSITION, max_equivariance_error, output_scale, transformed

__all__ = ["POSITION", "max_equivariance_error", "output_scale", "single_thread", "transformed"]


def single_thread():
    """Generator for a pytest fixture: tiny tensors run fastest (and fairest on a shared
    machine) on one thread; restores the previous setting."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
