"""Dynamic sampling in CPU fits: each update's statistics add up, and a resumed run repeats the same prompts."""

from __future__ import annotations

import lightning as L
import torch

from samr1.datamodules import SyntheticShapesDataModule
from samr1.modules.policy import GRPOModule
from samr1.rewards.base import Reward


class DigitMajorityReward(Reward):
    """1 when most of the completion's characters are digits: a binary reward, so groups are often flat."""

    def score(self, completions, samples):
        return torch.tensor([float(sum(c.isdigit() for c in t) * 2 > len(t)) for t in completions])


class UpdateHistory(L.Callback):
    """Per update: loss, reward and the dynamic-sampling statistics; counts the data batches consumed."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.updates: list[dict[str, float]] = []
        self.batches = 0
        self.stop_after = stop_after

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches += 1
        if pl_module.last_step is None:  # this batch only added groups to the pool
            return
        self.updates.append(dict(pl_module.last_step.stats))
        if self.stop_after is not None and len(self.updates) >= self.stop_after:
            trainer.should_stop = True


def fit(
    tiny_checkpoints, make_trainer, root, max_steps=4, stop_after=None, ckpt_path=None, rounds=2
) -> UpdateHistory:
    L.seed_everything(0)
    module = GRPOModule(
        model_path=tiny_checkpoints["policy"],
        rewards=[DigitMajorityReward()],
        image_size=(56, 56),
        group_size=4,
        max_new_tokens=4,
        learning_rate=1e-2,
        micro_batch_size=16,
        dynamic_sampling=True,
        max_resample_rounds=rounds,
    )
    data = SyntheticShapesDataModule(
        num_train=48, image_size=56, batch_size=3, val_split=None, test_split=None
    )
    history = UpdateHistory(stop_after)
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(dirpath=root, save_last=True, every_n_train_steps=1)
    trainer = make_trainer(max_steps=max_steps, callbacks=[history, checkpoint], default_root_dir=root)
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return history


def test_dynamic_sampling_fit_and_exact_resume(tiny_checkpoints, cpu_trainer, tmp_path):
    full = fit(tiny_checkpoints, cpu_trainer, tmp_path / "full")
    rounds = [u["dynamic_sampling/resample_rounds"] for u in full.updates]
    assert len(full.updates) == 4
    assert sum(rounds) > 0, "the toy reward should leave some groups flat, so some updates resample"
    # Each update consumed its first batch plus one per resample round.
    assert full.batches == sum(1 + r for r in rounds)
    for update in full.updates:
        after = update["dynamic_sampling/flat_group_frac_after"]
        assert after == update["reward/flat_group_frac"]  # the logged batch is the filtered one
        if update["dynamic_sampling/resample_rounds"] < 2:  # the rounds did not run out: no flat group left
            assert after == 0.0
    first = fit(tiny_checkpoints, cpu_trainer, tmp_path / "part", stop_after=2)
    resumed = fit(
        tiny_checkpoints, cpu_trainer, tmp_path / "part", ckpt_path=str(tmp_path / "part" / "last.ckpt")
    )
    keys = (
        "loss",
        "grad_norm",
        "reward/mean",
        "dynamic_sampling/resample_rounds",
        "dynamic_sampling/flat_group_frac_before",
    )
    assert [[u[k] for k in keys] for u in first.updates + resumed.updates] == [
        [u[k] for k in keys] for u in full.updates
    ]
