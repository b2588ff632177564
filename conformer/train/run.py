"""One training run from an ``ExperimentConfig``: build the pieces, the Trainer, fit.

Run folder ``<logging.run_dir>/<name>/``: ``config.yaml`` (resolved), ``checkpoints/``
(``last.ckpt`` every ``trainer.checkpoint_every_n_steps`` steps, at the end and on an
exception such as Ctrl-C; ``best.ckpt`` by val/loss), ``csv/version_K/`` (metrics every step; one folder per start),
``wandb/`` (offline unless ``WANDB_MODE`` says otherwise), ``gammas.csv`` and ``gammas.png``.
``resume=True`` continues from ``checkpoints/last.ckpt``.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path

import lightning as L
import yaml
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from conformer.config import ExperimentConfig
from conformer.diffusion import build_diffusion
from conformer.errors import UserInputError
from conformer.train.callbacks import CPUTimeLimit, FinalCheckpoint, GammaHistory
from conformer.train.module import ConformerDiffusionModule


def build_network(config: ExperimentConfig):
    from conformer.nn import build_denoiser

    try:
        return build_denoiser(config.model.preset, config.model.mode, **config.model.overrides)
    except (ValueError, TypeError) as error:
        raise UserInputError(f"model settings: {error}") from error


def resolved_model_spec(net, config: ExperimentConfig) -> dict:
    """``{"preset", "mode", "overrides", "hydrogens"}`` with every size and RECM setting
    spelled out, so a checkpoint still rebuilds its network after a preset's definition
    changes; ``hydrogens`` (``data.hydrogens``) tells generation which graph the network was
    trained on."""
    overrides = dict(config.model.overrides)
    for attribute in ("config", "recm_config"):
        settings = getattr(net, attribute, None)
        if dataclasses.is_dataclass(settings):
            overrides.update(dataclasses.asdict(settings))
    overrides.pop("mode", None)
    return {"preset": config.model.preset, "mode": config.model.mode, "overrides": overrides,
            "hydrogens": config.data.hydrogens}


def load_initial_weights(net, path: str | Path, hydrogens: str, grow: bool = False) -> None:
    """Put the weights of ``path`` (a training checkpoint's EMA weights, or a model file's)
    into ``net`` in place: ``model.init_from``. The network must match strictly; RECM branches
    the file no longer has (absorbed layers) are dropped from ``net`` first, as on resume.

    grow (``model.init_grow``): ``net`` may be the file's network with inputs or read-outs
    added; it starts computing what the file's network computes, with fresh RECM branches
    (``conformer.nn.grow``)."""
    from conformer import model_io
    from conformer.recm.export import align_dropped_branches

    state, meta = model_io.read_network_weights(path)
    if model_io.hydrogen_mode(meta) != hydrogens:
        raise UserInputError(f"model.init_from {path}: trained with hydrogens "
                             f"{model_io.hydrogen_mode(meta)}, this run has data.hydrogens "
                             f"{hydrogens}")
    if grow:
        from conformer.nn.grow import grow_into

        spec = meta.get("model_spec") or {}
        if "preset" not in spec:
            raise UserInputError(f"model.init_grow: {path} records no model_spec to build "
                                 "its network from")
        small = model_io._build_net(spec, state)
        fresh = grow_into(net, small)
        print(f"model.init_grow: started from {path}; {len(fresh)} new or fresh weights "
              "(new inputs at zero, RECM branches afresh)")
        return
    align_dropped_branches(net, state)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as error:
        detail = " ".join(str(error).split())[:400]
        hint = ("; a model file holds the exported network (RECM branches folded in): start "
                "from the run's .ckpt instead" if meta.get("format") == model_io.MODEL_FORMAT
                else "")
        raise UserInputError(f"model.init_from {path}: its network is not the one model.preset "
                             f"/ model.mode / model.overrides build ({detail}){hint}") from error


def build_module(config: ExperimentConfig, net=None) -> ConformerDiffusionModule:
    """The LightningModule of ``config`` (``net`` built from ``config.model`` unless given)."""
    net = build_network(config) if net is None else net
    try:
        diffusion = build_diffusion(config.diffusion)
    except ValueError as error:
        raise UserInputError(f"diffusion settings: {error}") from error
    model_spec = resolved_model_spec(net, config)
    return ConformerDiffusionModule(net, diffusion, config.optim, config=config.to_dict(),
                                    model_spec=model_spec, val_seed=config.seed + 1)


def _loggers(config: ExperimentConfig, run_dir: Path) -> list:
    # a new version folder per (re)start: a resumed run never overwrites earlier metrics
    loggers = [CSVLogger(save_dir=str(run_dir), name="csv")]
    mode = os.environ.get("WANDB_MODE", "offline")
    if config.logging.wandb and mode != "disabled":
        try:
            from lightning.pytorch.loggers import WandbLogger

            os.environ.setdefault("WANDB_MODE", "offline")  # nothing needs a network
            os.environ.setdefault("WANDB_SILENT", "true")
            loggers.append(WandbLogger(project=config.logging.wandb_project, name=config.name,
                                       save_dir=str(run_dir), offline=mode == "offline"))
        except (ImportError, ModuleNotFoundError) as error:
            warnings.warn(f"wandb logging off: {error}", stacklevel=2)
    return loggers


def build_trainer(config: ExperimentConfig, run_dir: Path, extra_callbacks=()) -> L.Trainer:
    t = config.trainer
    checkpoints = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="step{step}",
                                  save_last=True, save_top_k=0, save_on_exception=True,
                                  every_n_train_steps=t.checkpoint_every_n_steps,
                                  auto_insert_metric_name=False)
    best = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor="val/loss",
                           mode="min", save_top_k=1, enable_version_counter=False,
                           save_on_train_epoch_end=False)
    callbacks = [checkpoints, best, GammaHistory(run_dir), LearningRateMonitor("step"),
                 FinalCheckpoint(run_dir / "checkpoints" / "last.ckpt"), *extra_callbacks]
    if t.max_cpu_seconds is not None:
        budget = t.max_cpu_seconds
        if isinstance(budget, bool) or not isinstance(budget, int | float) or budget <= 0:
            raise UserInputError(f"trainer.max_cpu_seconds {t.max_cpu_seconds}: must be > 0")
        callbacks.append(CPUTimeLimit(t.max_cpu_seconds))
    return L.Trainer(
        max_steps=t.max_steps, max_epochs=t.max_epochs, max_time=t.max_time,
        accelerator=t.accelerator,
        devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy, precision=t.precision,
        val_check_interval=t.val_check_interval,
        check_val_every_n_epoch=t.check_val_every_n_epoch,
        limit_val_batches=t.limit_val_batches, log_every_n_steps=t.log_every_n_steps,
        accumulate_grad_batches=t.accumulate_grad_batches, deterministic=t.deterministic,
        gradient_clip_val=config.optim.grad_clip or None, gradient_clip_algorithm="norm",
        callbacks=callbacks, logger=_loggers(config, run_dir), default_root_dir=str(run_dir),
        enable_progress_bar=config.logging.progress_bar,
        use_distributed_sampler=False,  # the atom-count batch sampler shards by rank itself
        num_sanity_val_steps=0,
    )


def train(config: ExperimentConfig, resume: bool = False, datamodule=None, net=None,
          extra_callbacks=()) -> dict:
    """Train per ``config``; returns ``{"run_dir", "last_checkpoint", "best_checkpoint",
    "global_step"}``. ``datamodule``/``net`` replace the ones the config would build."""
    from conformer.data.datamodule import ConformerDataModule

    run_dir = config.run_path
    last = run_dir / "checkpoints" / "last.ckpt"
    if resume and not last.exists():
        raise UserInputError(f"--resume: no checkpoint at {last} to resume from")
    if not resume and last.exists():
        raise UserInputError(f"run folder {run_dir} already has a checkpoint; pass --resume to "
                             "continue it, or choose another name / logging.run_dir")
    L.seed_everything(config.seed, workers=True, verbose=False)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    if config.model.init_from and not resume:
        net = build_network(config) if net is None else net
        load_initial_weights(net, config.model.init_from, config.data.hydrogens,
                             grow=config.model.init_grow)
    module = build_module(config, net=net)
    if datamodule is None:
        datamodule = ConformerDataModule.from_config(config.data, seed=config.seed)
    elif getattr(datamodule, "hydrogens", "explicit") != config.data.hydrogens:
        # the model file would claim one graph while the network learnt on the other
        raise UserInputError(f"data.hydrogens {config.data.hydrogens}: the datamodule given "
                             f"builds {getattr(datamodule, 'hydrogens', 'explicit')} batches")
    trainer = build_trainer(config, run_dir, extra_callbacks)
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if resume else None,
                weights_only=True)
    best = run_dir / "checkpoints" / "best.ckpt"
    return {"run_dir": str(run_dir), "last_checkpoint": str(last) if last.exists() else None,
            "best_checkpoint": str(best) if best.exists() else None,
            "global_step": trainer.global_step}
