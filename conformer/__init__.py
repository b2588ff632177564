"""conformer: 3D conformer generation with an E(3)-equivariant diffusion model and RECM."""

__version__ = "0.1.0"
