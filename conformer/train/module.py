"""The LightningModule: a denoiser network + EDM diffusion or flow matching + EMA + the RECM
step.

The network is built outside (``conformer.nn.build_denoiser``) and passed in: this module owns
the training procedure, not the architecture.

Per optimiser step: AdamW (gradients clipped by the Trainer), then the RECM controller's
signal sync across DDP ranks and its recurrent gamma update (no gradient), then the EMA update.
Everything RECM goes through ``self.recm`` (``conformer.recm.controller_of``; a no-op for a
network without modulated layers). RECM's state lives in the modulated layers' buffers, so the
ordinary ``state_dict`` in the checkpoint carries it; the EMA weights, resolved config and
``environment_info()`` are added in ``on_save_checkpoint``. Validation uses the EMA weights and a fixed noise draw per batch, so
val/loss values are comparable across steps.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from torch import nn
from torch_geometric.data import Batch

from conformer.diffusion import EDMDiffusion, FlowMatching, settings_dict
from conformer.model_io import CHECKPOINT_FORMAT
from conformer.recm.export import align_dropped_branches
from conformer.versions import environment_info


def handedness_hinge(batch: Batch, weight: float, margin: float):
    """``auxiliary(denoised [N, 3], clean [N, 3]) -> scalar`` for ``EDMDiffusion.loss``:
    ``weight * mean(relu(margin - sign(V_clean) V_denoised))`` over the R/S centres of
    ``batch`` with three CIP-ranked neighbours (``nn.denoiser.ranked_centres``), V the
    normalised signed volume (``guidance.signed_volumes``, in [-1, 1]); 0 without such
    centres. The clean conformer's own sign is the target: proper rotations (the
    augmentation) keep it, and a training conformer has the labelled handedness."""
    from conformer.diffusion.guidance import signed_volumes
    from conformer.nn.denoiser import ranked_centres

    centres, ring, _ = ranked_centres(batch, reader="optim.volume_loss_weight")
    quads = torch.cat([centres.unsqueeze(1), ring], dim=1)  # [C, 4]

    def hinge(denoised: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        if quads.shape[0] == 0:
            return denoised.new_zeros(())
        wanted = torch.sign(signed_volumes(clean, quads)).detach()
        volumes = signed_volumes(denoised, quads)
        return weight * torch.relu(margin - wanted * volumes).mean()

    return hinge


class ExponentialMovingAverage:
    """EMA of a network's floating-point parameters (buffers are taken from the live network:
    RECM's state is not something to average)."""

    def __init__(self, net: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {name: p.detach().clone() for name, p in net.named_parameters()}
        self._backup: dict[str, torch.Tensor] | None = None

    @torch.no_grad()
    def update(self, net: nn.Module, step: int) -> None:
        # warm-up of the decay: early weights are noise and should not linger
        decay = min(self.decay, (1 + step) / (10 + step))
        for name, p in net.named_parameters():
            shadow = self.shadow.get(name)
            if shadow is None or shadow.shape != p.shape:
                self.shadow[name] = p.detach().clone()
            else:
                shadow.lerp_(p.detach().to(shadow.dtype), 1.0 - decay)

    def state_dict(self, net: nn.Module) -> dict[str, torch.Tensor]:
        names = {name for name, _ in net.named_parameters()}
        return {k: v for k, v in self.shadow.items() if k in names}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.shadow = {k: v.clone() for k, v in state.items()}

    @torch.no_grad()
    def swap_in(self, net: nn.Module) -> None:
        """Put the EMA weights into ``net`` (``swap_out`` restores the live ones)."""
        self._backup = {}
        for name, p in net.named_parameters():
            if name in self.shadow:
                self._backup[name] = p.detach().clone()
                p.copy_(self.shadow[name].to(device=p.device, dtype=p.dtype))

    @torch.no_grad()
    def swap_out(self, net: nn.Module) -> None:
        if self._backup is None:
            return
        for name, p in net.named_parameters():
            if name in self._backup:
                p.copy_(self._backup[name])
        self._backup = None

    def to(self, device) -> None:
        self.shadow = {k: v.to(device) for k, v in self.shadow.items()}


class ConformerDiffusionModule(L.LightningModule):
    """Train ``net`` (``net(batch, noise_conditioning[B]) -> [N, 3]``) as an EDM denoiser or
    a flow-matching velocity field.

    diffusion: the generative process (``conformer.diffusion.build_diffusion``: loss and
    sampler). optim: ``conformer.config.OptimConfig``.
    config: the resolved experiment config as a dict (saved in every checkpoint).
    model_spec: ``{"preset", "mode", "overrides"}`` needed to rebuild ``net``.
    """

    def __init__(self, net: nn.Module, diffusion: EDMDiffusion | FlowMatching, optim,
                 config: dict | None = None, model_spec: dict | None = None,
                 val_seed: int = 1234):
        super().__init__()
        self.net = net
        self.diffusion = diffusion
        self.optim_config = optim
        self.config_dict = config or {}
        self.model_spec = model_spec or {}
        self.val_seed = val_seed
        self.ema = ExponentialMovingAverage(net, optim.ema_decay)
        self.volume_loss_weight = float(getattr(optim, "volume_loss_weight", 0.0))
        self.volume_loss_margin = float(getattr(optim, "volume_loss_margin", 0.3))
        if self.volume_loss_weight and not isinstance(diffusion, EDMDiffusion):
            raise ValueError("optim.volume_loss_weight needs the EDM diffusion (the flow-"
                             "matching loss has no denoised estimate to score); set it to 0")

    @property
    def recm(self):
        """The network's RECM controller (``conformer.recm.RECMController``)."""
        from conformer.recm import controller_of

        return controller_of(self.net)

    # -- steps -----------------------------------------------------------------------------
    def forward(self, batch: Batch, noise_conditioning: torch.Tensor) -> torch.Tensor:
        return self.net(batch, noise_conditioning)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        # which molecules are held out of RECM's branches (b is scored on them alone);
        # batches built without a dataset index fall back to scoring b on every molecule
        self.recm.hold_out(getattr(batch, "molecule_id", None))
        if self.volume_loss_weight:
            loss = self.diffusion.loss(self.net, batch, auxiliary=handedness_hinge(
                batch, self.volume_loss_weight, self.volume_loss_margin))
        else:
            loss = self.diffusion.loss(self.net, batch)
        regularization = self.recm.regularization_loss().to(loss)
        total = loss + regularization
        size = batch.num_graphs
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log("train/regularization", regularization, batch_size=size)
        return total

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None,
                                    gradient_clip_algorithm=None) -> None:
        # RECM's surrogate-gradient branches are clipped apart from the rest of the network
        # (RECMController.clip_grad_norm_); other modes and value clipping as Lightning does
        if (gradient_clip_val and gradient_clip_algorithm in (None, "norm")
                and self.recm.surrogate_parameters()):
            parameters = [p for group in optimizer.param_groups for p in group["params"]]
            self.recm.clip_grad_norm_(parameters, float(gradient_clip_val))
            return
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        # called after the optimiser step of this batch (when there was one)
        if not self._stepped_this_batch:
            return
        self._stepped_this_batch = False
        for name, value in self.recm.log_dict().items():
            self.log(name, value, batch_size=1)

    _stepped_this_batch = False

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        recm = self.recm
        recm.synchronize_signals()  # under DDP: every rank then applies the same update
        recm.after_optimizer_step(self._progress())
        self.ema.update(self.net, self.global_step)
        self._stepped_this_batch = True
        self.log("lr", optimizer.param_groups[0]["lr"], batch_size=1)

    def _progress(self) -> float:
        total = self._total_steps()
        return min(1.0, (self.global_step + 1) / total) if total else 0.0

    def _total_steps(self) -> int:
        trainer = self._trainer
        if trainer is None:
            return 0
        try:
            steps = trainer.estimated_stepping_batches
        except Exception:  # estimation needs a dataloader; absent in some unit uses
            steps = trainer.max_steps
        return int(steps) if steps and math.isfinite(steps) and steps > 0 else 0

    def validation_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.val_seed + batch_idx)
        loss = self.diffusion.loss(self.net, batch, generator=generator)
        self.log("val/loss", loss, prog_bar=True, batch_size=batch.num_graphs,
                 sync_dist=True)
        return loss

    def on_validation_epoch_start(self) -> None:
        self.ema.to(self.device)
        self.ema.swap_in(self.net)

    def on_validation_epoch_end(self) -> None:
        self.ema.swap_out(self.net)

    # -- optimiser ------------------------------------------------------------------------
    def configure_optimizers(self):
        cfg = self.optim_config
        optimizer = torch.optim.AdamW(self.net.parameters(), lr=cfg.lr,
                                      weight_decay=cfg.weight_decay)
        total = max(self._total_steps(), 1)
        warmup = max(int(cfg.warmup_steps), 0)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            cosine = 0.5 * (1 + math.cos(math.pi * progress))
            return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- checkpoint -----------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["format"] = CHECKPOINT_FORMAT
        checkpoint["ema_state_dict"] = {k: v.detach().cpu()
                                        for k, v in self.ema.state_dict(self.net).items()}
        checkpoint["config"] = self.config_dict
        checkpoint["model_spec"] = self.model_spec
        checkpoint["diffusion_settings"] = settings_dict(self.diffusion.settings)
        checkpoint["environment"] = environment_info()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        align_dropped_branches(self.net, checkpoint["state_dict"], prefix="net.")
        if "ema_state_dict" in checkpoint:
            self.ema.load_state_dict(checkpoint["ema_state_dict"])
