"""GRPO learns: on a toy reward a random policy hits sometimes, the mean reward rises within a step budget."""

from __future__ import annotations

import lightning as L
import pytest
from toy_rewards import DigitShareReward

import samr1.modules.module as module_file
import samr1.modules.update as update_file
from samr1.datamodules import SyntheticShapesDataModule
from samr1.modules.grpo import group_advantages, policy_loss
from samr1.modules.policy import GRPOModule


class RewardHistory(L.Callback):
    def __init__(self) -> None:
        self.rewards: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.rewards.append(float(trainer.callback_metrics["train/reward/mean"]))


def train_toy(tiny_checkpoints, make_trainer, steps: int = 30, **overrides) -> list[float]:
    L.seed_everything(0)
    kwargs = dict(
        model_path=tiny_checkpoints["policy"],
        rewards=[DigitShareReward()],
        image_size=(56, 56),
        group_size=8,
        max_new_tokens=8,
        learning_rate=3e-3,
        num_iterations=1,
        micro_batch_size=16,
        kl_coef=0.0,
        seed=0,
    )
    kwargs.update(overrides)
    module = GRPOModule(**kwargs)
    data = SyntheticShapesDataModule(
        num_train=512, image_size=56, batch_size=2, val_split=None, test_split=None
    )
    history = RewardHistory()
    trainer = make_trainer(max_steps=steps, callbacks=[history])
    trainer.fit(module, datamodule=data)
    return history.rewards


STEPS, LR, GAIN = 20, 1e-2, 0.3


def learned(rewards: list[float]) -> tuple[float, float]:
    return sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3


def test_grpo_raises_a_toy_reward(tiny_checkpoints, cpu_trainer):
    start, end = learned(train_toy(tiny_checkpoints, cpu_trainer, steps=STEPS, learning_rate=LR))
    assert start < 0.5, f"the random policy should only sometimes hit the toy reward, got {start:.3f}"
    assert end > start + GAIN, f"GRPO did not learn: mean reward {start:.3f} -> {end:.3f}"


def _flipped_sign(rewards, group_size, scale):
    return -group_advantages(rewards, group_size, scale)


def _uncentred(rewards, group_size, scale):
    std = rewards.view(-1, group_size).std(dim=1, keepdim=True).expand(-1, group_size).reshape(-1)
    return rewards.float() / (std + 1e-6)


def _inverted_mask_loss(logprobs, old, advantages, mask, **kwargs):
    return policy_loss(logprobs, old, advantages, 1 - mask, **kwargs)


@pytest.mark.parametrize(
    "where, target, broken",
    [
        (module_file, "group_advantages", _flipped_sign),
        (module_file, "group_advantages", _uncentred),
        (update_file, "policy_loss", _inverted_mask_loss),
    ],
    ids=["advantage-sign", "advantage-normalisation", "completion-mask"],
)
def test_the_learning_test_fails_when_grpo_is_broken(
    tiny_checkpoints, cpu_trainer, monkeypatch, where, target, broken
):
    # The learning bar above must catch each of these bugs, or it proves nothing.
    monkeypatch.setattr(where, target, broken)
    start, end = learned(train_toy(tiny_checkpoints, cpu_trainer, steps=STEPS, learning_rate=LR))
    assert end <= start + GAIN, f"a broken {target} still cleared the bar: {start:.3f} -> {end:.3f}"
