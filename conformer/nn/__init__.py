"""Neural network: plain-torch graphs, e3nn blocks and the denoiser (builders + presets)."""

from conformer.nn.denoiser import PRESETS, Denoiser, DenoiserConfig, build_denoiser

__all__ = ["PRESETS", "Denoiser", "DenoiserConfig", "build_denoiser"]
