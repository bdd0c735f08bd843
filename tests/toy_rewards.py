"""Test helpers: a toy reward (dense, cheap, hit only sometimes by a random tiny policy) and a DDP probe."""

from __future__ import annotations

import lightning as L
import torch

from samr1.rewards.base import Reward


class DigitShareReward(Reward):
    """Share of the completion's characters that are digits (the random tiny policy scores about 0.4)."""

    def score(self, completions, samples):
        return torch.tensor([sum(c.isdigit() for c in t) / max(len(t), 1) for t in completions])


class ParameterChecksum(L.Callback):
    """Writes each rank's policy parameter checksum at the start and end of fit (DDP replicas must agree)."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def _write(self, trainer, pl_module, when: str) -> None:
        params = pl_module.policy.parameters()
        total = sum(p.detach().double().sum().item() * (i + 1) for i, p in enumerate(params))
        with open(f"{self.out_dir}/{when}{trainer.global_rank}.txt", "w") as f:
            f.write(repr(total))

    def on_train_start(self, trainer, pl_module) -> None:
        self._write(trainer, pl_module, "start")

    def on_train_end(self, trainer, pl_module) -> None:
        self._write(trainer, pl_module, "end")
