"""Diffusion on centred Cartesian coordinates: EDM preconditioning, loss and Heun sampler."""

from conformer.diffusion.edm import (
    EDMDiffusion,
    EDMSettings,
    center,
    karras_sigmas,
    random_rotations,
)

__all__ = ["EDMDiffusion", "EDMSettings", "center", "karras_sigmas", "random_rotations"]
