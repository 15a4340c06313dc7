"""Training: the LightningModule, losses, optimisers and schedules, callbacks."""
