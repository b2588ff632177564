"""Model files, read and written without any training code (no Lightning import).

Deployable model files are the EMA weights of a training checkpoint, exported.

An exported model file is a plain dict (``torch.load(..., weights_only=True)`` reads it):
    format             "conformer-model/1"
    model_spec         {"preset", "mode", "overrides"} for ``conformer.nn.build_denoiser``,
                       and "hydrogens": "explicit" (every atom diffused) or "implicit"
                       (heavy atoms only, hydrogens placed by RDKit at generation); files
                       written before the setting existed have no such key: explicit
    diffusion_settings the generative process's settings: ``kind`` ("edm" or "flow"; absent
                       in files written before flow matching: EDM) and the fields of
                       ``conformer.diffusion.EDMSettings`` or ``FlowSettings``
    state_dict         EMA weights + buffers after ``conformer.recm.export`` (dropped branches
                       removed); float32
    config             the resolved training config
    environment        ``environment_info()`` of the training run; ``export_environment`` of
                       the export
    training           {"global_step", "source_checkpoint_sha256"}
``load_model`` reads such a file or a Lightning checkpoint of this project (EMA weights):
a training checkpoint is a plain dict too (``format`` ``CHECKPOINT_FORMAT``; its ``state_dict``
and ``ema_state_dict`` are read as tensors), so reading one needs no Lightning either.
"""

from __future__ import annotations

from pathlib import Path

import torch

from conformer.diffusion import (
    TRAINING_KEYS,
    build_diffusion,
    diffusion_kind,
    settings_from_dict,
)
from conformer.errors import UserInputError
from conformer.recm.controller import controller_of
from conformer.recm.export import align_dropped_branches
from conformer.versions import environment_info, file_sha256

MODEL_FORMAT = "conformer-model/1"
# written into every training checkpoint by conformer.train.module (on_save_checkpoint)
CHECKPOINT_FORMAT = "conformer-lightning/1"
BUNDLED_MODEL = Path(__file__).resolve().parent / "assets" / "model.pt"


def _read(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"checkpoint {path}: no such file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a corrupt or foreign file: say which and why
        raise UserInputError(f"checkpoint {path}: cannot be read ({error})") from error
    if not isinstance(data, dict) or data.get("format") not in (MODEL_FORMAT, CHECKPOINT_FORMAT):
        raise UserInputError(f"checkpoint {path}: not a conformer model or training checkpoint")
    return data


def hydrogen_mode(meta: dict) -> str:
    """``"explicit"`` or ``"implicit"``: the ``model_spec["hydrogens"]`` of a model file or
    checkpoint (or of ``load_model``'s meta); absent (older files) means explicit."""
    return meta.get("model_spec", {}).get("hydrogens", "explicit")


def _check_hydrogens(path: Path, data: dict) -> None:
    from conformer.config import HYDROGEN_MODES

    mode = hydrogen_mode(data)
    if mode not in HYDROGEN_MODES:
        raise UserInputError(f"checkpoint {path}: model_spec hydrogens {mode!r} is not one of "
                             f"{', '.join(HYDROGEN_MODES)} (a newer version's file?)")


def _build_net(spec: dict, state_dict: dict):
    from conformer.nn import build_denoiser

    net = build_denoiser(spec["preset"], spec["mode"], **spec.get("overrides", {}))
    align_dropped_branches(net, state_dict)
    net.load_state_dict(state_dict, strict=True)
    return net


def _ema_state(data: dict) -> dict:
    """The network state dict of a Lightning checkpoint with the EMA weights put in."""
    state = {k[len("net."):]: v for k, v in data["state_dict"].items() if k.startswith("net.")}
    state.update(data.get("ema_state_dict", {}))
    return state


def read_network_weights(path: str | Path) -> tuple[dict, dict]:
    """``(state_dict, meta)`` of a model file or training checkpoint (its EMA weights, RECM
    branches unfolded), for starting a new run from it; meta as in ``load_model``."""
    path = Path(path)
    data = _read(path)
    _check_hydrogens(path, data)
    state = _ema_state(data) if data["format"] == CHECKPOINT_FORMAT else data["state_dict"]
    meta = {k: v for k, v in data.items() if k not in ("state_dict", "ema_state_dict",
                                                         "optimizer_states", "lr_schedulers")}
    return state, meta


def load_model(path: str | Path | None = None, device: str | torch.device = "cpu"):
    """``(net, diffusion, meta)`` from an exported model file or a training checkpoint.

    path None -> the bundled model. net is in eval mode on ``device``; meta is the file's
    dict without the weights.
    """
    path = Path(path) if path else BUNDLED_MODEL
    if path == BUNDLED_MODEL and not path.is_file():
        raise UserInputError(f"bundled model {path} is missing; pass --ckpt")
    data = _read(path)
    _check_hydrogens(path, data)
    if data["format"] == CHECKPOINT_FORMAT:
        from conformer.recm import export

        net = export(_build_net(data["model_spec"], _ema_state(data)))
    else:
        net = _build_net(data["model_spec"], data["state_dict"])
    net.to(device).eval()
    try:
        diffusion = build_diffusion(data["diffusion_settings"])
    except (TypeError, ValueError) as error:
        raise UserInputError(f"checkpoint {path}: diffusion settings: {error}") from error
    meta = {k: v for k, v in data.items() if k not in ("state_dict", "ema_state_dict",
                                                         "optimizer_states", "lr_schedulers")}
    return net, diffusion, meta


def export_checkpoint(checkpoint: str | Path, out: str | Path,
                      sampler_overrides: dict | None = None) -> dict:
    """Write the exported EMA model of a training checkpoint to ``out``; returns its meta.

    sampler_overrides: diffusion settings that only affect sampling (e.g. ``{"churn": 10}``
    for EDM, ``{"sample_steps": 10}`` for flow),
    chosen after training; recorded in the file's ``training.sampler_overrides``.
    """
    from conformer.recm import export

    data = _read(checkpoint)
    if data["format"] != CHECKPOINT_FORMAT:
        raise UserInputError(f"checkpoint {checkpoint}: already an exported model")
    net = export(_build_net(data["model_spec"], _ema_state(data)))
    overrides = dict(sampler_overrides or {})
    try:
        kind = diffusion_kind(data["diffusion_settings"])
    except ValueError as error:
        raise UserInputError(f"checkpoint {checkpoint}: diffusion settings: {error}") from error
    training_only = TRAINING_KEYS[kind] & set(overrides)
    if training_only:
        raise UserInputError(f"sampler overrides: {', '.join(sorted(training_only))} "
                             "define the trained model and cannot change at export")
    diffusion_settings = {**data["diffusion_settings"], **overrides}
    try:
        settings_from_dict(diffusion_settings)
    except (TypeError, ValueError) as error:
        raise UserInputError(f"sampler overrides {overrides}: {error}") from error
    training = {"global_step": int(data.get("global_step", 0)),
                "source_checkpoint_sha256": file_sha256(checkpoint),
                "sampler_overrides": overrides}
    return save_model(net, data["model_spec"], diffusion_settings, out,
                      config=data.get("config", {}), environment=data.get("environment", {}),
                      training=training)


def save_model(net, model_spec: dict, diffusion_settings: dict, out: str | Path,
               config: dict | None = None, environment: dict | None = None,
               training: dict | None = None) -> dict:
    """Write ``net`` (already exported) as a model file (layout in the module docstring)."""
    model = {
        "format": MODEL_FORMAT,
        "model_spec": dict(model_spec),
        "diffusion_settings": dict(diffusion_settings),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()},
        "config": config or {},
        "environment": environment or {},
        "export_environment": environment_info(),
        "training": training or {},
        "gammas": controller_of(net).gammas(),
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    torch.save(model, tmp)
    tmp.replace(out)
    return {k: v for k, v in model.items() if k != "state_dict"}
