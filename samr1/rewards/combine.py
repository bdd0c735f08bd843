"""Scoring a step's completions with the configured rewards, and the statistics logged about them."""

from __future__ import annotations

import torch

from samr1.rewards.base import Reward
from samr1.sample import SegSample


def score_completions(
    rewards: list[Reward], completions: list[str], samples: list[SegSample]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum of every reward [N], and each reward's unweighted scores by name."""
    if not rewards:
        raise ValueError("no rewards configured: set model.rewards")
    per_reward = {reward.name: reward(completions, samples) for reward in rewards}
    total = torch.zeros(len(completions))
    for reward in rewards:
        total += reward.weight * per_reward[reward.name]
    return total, per_reward


def reward_statistics(
    total: torch.Tensor, per_reward: dict[str, torch.Tensor], group_size: int
) -> dict[str, float]:
    """Mean/std of the total and of each reward, and the share of groups that carry no signal."""
    groups = total.view(-1, group_size)
    stats = {
        "reward/mean": total.mean().item(),
        "reward/std": total.std().item() if total.numel() > 1 else 0.0,
        "reward/flat_group_frac": (groups == groups[:, :1]).all(dim=1).float().mean().item(),
    }
    for name, values in per_reward.items():
        stats[f"reward/{name}"] = values.mean().item()
        stats[f"reward/{name}_std"] = values.std().item() if values.numel() > 1 else 0.0
    return stats
