"""A toy reward for training tests: dense, cheap, and hit only sometimes by a random tiny policy."""

from __future__ import annotations

import torch

from samr1.rewards.base import Reward


class DigitShareReward(Reward):
    """Share of the completion's characters that are digits (the random tiny policy scores about 0.4)."""

    def score(self, completions, samples):
        return torch.tensor([sum(c.isdigit() for c in t) / max(len(t), 1) for t in completions])
