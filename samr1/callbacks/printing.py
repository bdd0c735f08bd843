"""A plain per-step line in the terminal: what a user wants to see while a run trains."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.utilities import rank_zero_info


class StepPrinter(L.Callback):
    """Prints the step, reward, KL, loss and time per phase every `every_n_steps` rollout batches."""

    def __init__(
        self, every_n_steps: int = 1, keys: tuple[str, ...] = ("reward/mean", "kl", "loss", "entropy")
    ) -> None:
        self.every_n_steps = every_n_steps
        self.keys = keys
        self._batches = 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx
    ) -> None:
        self._batches += 1
        if self._batches % self.every_n_steps:
            return
        metrics = trainer.callback_metrics
        parts = [f"step {trainer.global_step:4d}"]
        for key in self.keys:
            value = metrics.get(f"train/{key}")
            if value is not None:
                parts.append(
                    f"{key.split('/')[-1] if key != 'reward/mean' else 'reward'} {float(value):8.4f}"
                )
        phases = [(k.split("/")[-1], float(v)) for k, v in metrics.items() if k.startswith("train/time/")]
        if phases:
            parts.append("time " + " ".join(f"{name} {sec:.2f}s" for name, sec in phases))
        rank_zero_info(" | ".join(parts))
