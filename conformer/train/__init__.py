"""Training: the LightningModule (EMA, RECM step, checkpoints), callbacks, run, export."""
