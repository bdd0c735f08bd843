"""`fit --ckpt_path` continues exactly: the losses after a resume equal those of an uninterrupted run."""

from __future__ import annotations

import lightning as L
from toy_rewards import DigitShareReward

from samr1.datamodules import SyntheticShapesDataModule
from samr1.modules.policy import GRPOModule


class LossHistory(L.Callback):
    """Records each step's loss and reward; with `stop_after`, stops the run there (a crash, as far as the
    schedule knows: max_steps stays the same)."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.losses: list[float] = []
        self.rewards: list[float] = []
        self.stop_after = stop_after

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(trainer.callback_metrics["train/loss"]))
        self.rewards.append(float(trainer.callback_metrics["train/reward/mean"]))
        if self.stop_after is not None and len(self.losses) >= self.stop_after:
            trainer.should_stop = True


def run(
    tiny_checkpoints, make_trainer, root, stop_after: int | None = None, ckpt_path: str | None = None
) -> LossHistory:
    L.seed_everything(0)
    module = GRPOModule(
        model_path=tiny_checkpoints["policy"],
        rewards=[DigitShareReward()],
        image_size=(56, 56),
        group_size=4,
        max_new_tokens=6,
        learning_rate=1e-2,
        num_iterations=2,  # old log-probs and clipping are exercised
        micro_batch_size=4,
        kl_coef=0.05,  # the reference model too
        lr_schedule="cosine",
        warmup_steps=2,
    )
    # 10 samples in batches of 4: epochs of 3 batches, so the resume point (step 4) lies mid-epoch.
    data = SyntheticShapesDataModule(
        num_train=10, image_size=56, batch_size=4, val_split=None, test_split=None
    )
    history = LossHistory(stop_after)
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(dirpath=root, save_last=True, every_n_train_steps=1)
    trainer = make_trainer(
        max_steps=16,  # optimiser steps: 2 per rollout batch here (num_iterations=2)
        callbacks=[history, checkpoint],
        default_root_dir=root,
    )
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return history


def test_resume_gives_the_same_losses(tiny_checkpoints, cpu_trainer, tmp_path):
    full = run(tiny_checkpoints, cpu_trainer, tmp_path / "full")
    first = run(tiny_checkpoints, cpu_trainer, tmp_path / "part", stop_after=4)
    resumed = run(
        tiny_checkpoints, cpu_trainer, tmp_path / "part", ckpt_path=str(tmp_path / "part" / "last.ckpt")
    )
    assert first.losses + resumed.losses == full.losses
    assert first.rewards + resumed.rewards == full.rewards
    assert len(resumed.losses) == 4


def test_resume_hands_the_wandb_run_id_to_the_logger(tmp_path):
    from types import SimpleNamespace

    import torch

    from samr1.cli import resume_wandb_run
    from samr1.loggers import WandbLogger

    ckpt = tmp_path / "last.ckpt"
    torch.save({"samr1_wandb_run_id": "run123"}, ckpt)
    logger = WandbLogger(save_dir=str(tmp_path), offline=True)
    resume_wandb_run(str(ckpt), SimpleNamespace(loggers=[logger], checkpoint_callback=None))
    assert logger.version == "run123"
    assert logger._wandb_init["resume"] == "allow"
