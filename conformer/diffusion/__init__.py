"""Generative processes on centred Cartesian coordinates: EDM diffusion (``edm``) and flow
matching from a harmonic prior (``flow``), behind one interface (``loss``, ``sample``,
``denoise``, ``num_evaluations``, ``settings``); ``build_diffusion`` picks one by ``kind``."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from conformer.diffusion.edm import (
    EDMDiffusion,
    EDMSettings,
    center,
    karras_sigmas,
    random_rotations,
)
from conformer.diffusion.flow import FLOW_TRAINING_KEYS, FlowMatching, FlowSettings

DIFFUSION_KINDS = {"edm": (EDMSettings, EDMDiffusion), "flow": (FlowSettings, FlowMatching)}
# settings that define what a network learnt: a model file's sampler may change the others
TRAINING_KEYS = {"edm": frozenset({"kind", "sigma_data", "p_mean", "p_std"}),
                 "flow": FLOW_TRAINING_KEYS}

DiffusionSettings = EDMSettings | FlowSettings


def diffusion_kind(settings: Mapping | EDMSettings | FlowSettings) -> str:
    """``"edm"`` or ``"flow"``; a mapping without ``kind`` (model files written before flow
    matching existed) is EDM. ValueError for another kind."""
    kind = settings.get("kind", "edm") if isinstance(settings, Mapping) else settings.kind
    if kind not in DIFFUSION_KINDS:
        raise ValueError(f"unknown diffusion kind {kind!r}; choose one of "
                         f"{', '.join(DIFFUSION_KINDS)}")
    return kind


def settings_from_dict(settings: Mapping) -> EDMSettings | FlowSettings:
    """The settings dataclass a ``diffusion_settings`` dict describes (TypeError on unknown
    keys, ValueError on bad values or an unknown kind)."""
    settings_class, _ = DIFFUSION_KINDS[diffusion_kind(settings)]
    return settings_class(**dict(settings))


def build_diffusion(settings: Mapping | EDMSettings | FlowSettings | None = None
                    ) -> EDMDiffusion | FlowMatching:
    """The loss-and-sampler object of ``settings`` (a dict as stored in model files, or a
    settings dataclass; None: EDM defaults)."""
    if settings is None:
        return EDMDiffusion()
    if isinstance(settings, Mapping):
        settings = settings_from_dict(settings)
    _, process_class = DIFFUSION_KINDS[diffusion_kind(settings)]
    return process_class(settings)


def settings_dict(settings: EDMSettings | FlowSettings) -> dict:
    """The settings as the plain dict stored in checkpoints and model files (with ``kind``)."""
    return dataclasses.asdict(settings)


__all__ = ["DIFFUSION_KINDS", "DiffusionSettings", "EDMDiffusion", "EDMSettings",
           "FlowMatching", "FlowSettings", "TRAINING_KEYS", "build_diffusion", "center",
           "diffusion_kind", "karras_sigmas", "random_rotations", "settings_dict",
           "settings_from_dict"]
