"""GSPO in a CPU fit: the sequence-level ratio reaches the update."""

from __future__ import annotations

import math

import lightning as L
from toy_rewards import DigitShareReward

from samr1.datamodules import SyntheticShapesDataModule
from samr1.modules.policy import GRPOModule


def _fit_losses(tiny_checkpoints, make_trainer, importance_level: str) -> list[float]:
    L.seed_everything(0)
    module = GRPOModule(
        model_path=tiny_checkpoints["policy"],
        rewards=[DigitShareReward()],
        image_size=(56, 56),
        group_size=4,
        max_new_tokens=6,
        learning_rate=1e-2,
        num_iterations=2,  # the second pass sees moved ratios
        micro_batch_size=8,
        importance_level=importance_level,
    )
    data = SyntheticShapesDataModule(
        num_train=8, image_size=56, batch_size=2, val_split=None, test_split=None
    )
    losses: list[float] = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(trainer.callback_metrics["train/loss"]))
            assert math.isfinite(float(trainer.callback_metrics["train/ratio_mean"]))

    trainer = make_trainer(max_steps=4, callbacks=[Record()])
    trainer.fit(module, datamodule=data)
    return losses


def test_gspo_fit_on_cpu(tiny_checkpoints, cpu_trainer):
    token = _fit_losses(tiny_checkpoints, cpu_trainer, "token")
    sequence = _fit_losses(tiny_checkpoints, cpu_trainer, "sequence")
    assert len(sequence) == 2 and all(math.isfinite(x) for x in sequence)
    # The first rollout's first pass is identical (all ratios 1); the sequence ratio changes the second pass.
    assert sequence != token
