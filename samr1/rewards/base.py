"""The reward interface: a configurable callable from (completions, samples) to one score per completion.

Rewards are configured by `class_path` in YAML, e.g.

    rewards:
      - class_path: samr1.rewards.ThinkFormatReward
        init_args: {weight: 1.0}

`samples[i]` is the sample that `completions[i]` answers (each sample repeated G times in training). A reward
never raises on model output: an answer it cannot use scores `min_value`.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch

from samr1.sample import SegSample


@dataclass
class RewardContext:
    """Resources the trainer shares with every reward once per process (one SAM for rewards and evaluation)."""

    segmenter: Any | None = None  # samr1.sam.SamPromptSegmenter-like: predict(image, boxes, points, ...)
    device: torch.device | str = "cpu"
    # The one answer -> SAM prompt -> mask path with the run's mask selection (samr1.sam.segment.AnswerSegmenter:
    # `segment(samples, answers, prompt, multi_object) -> (masks, scores)`), shared with evaluation. GRPOModule
    # sets it whenever there is a segmenter; rewards that make masks use it instead of calling SAM themselves.
    segment: Any | None = None


class Reward(ABC):
    """Base class of reward plugins. Subclasses implement `score`; `__call__` validates its output."""

    min_value: float = 0.0
    max_value: float = 1.0

    def __init__(self, weight: float = 1.0, name: str | None = None) -> None:
        self.weight = float(weight)
        self.name = name or _snake(type(self).__name__.removesuffix("Reward"))
        # Extra per-completion values a reward wants logged or shown (e.g. raw mask IoU); replaced on each call.
        self.details: dict[str, torch.Tensor] = {}
        # SAM's masks (bool H x W or None per completion) of the last call, for rewards that make them.
        self.last_masks: list | None = None

    def setup(self, context: RewardContext) -> None:
        """Receive shared resources before the first call; rewards that need none ignore it."""

    @abstractmethod
    def score(self, completions: list[str], samples: list[SegSample]) -> torch.Tensor:
        """One float per completion."""

    def __call__(self, completions: list[str], samples: list[SegSample]) -> torch.Tensor:
        if len(completions) != len(samples):
            raise ValueError(
                f"{self.name}: {len(completions)} completions but {len(samples)} samples; pass the sample of each"
            )
        self.details = {}
        # float64: a continuous reward keeps its value exactly (the mean of a continuous mask reward is gIoU).
        scores = torch.as_tensor(self.score(completions, samples), dtype=torch.float64).reshape(-1)
        if scores.numel() != len(completions):
            raise RuntimeError(
                f"{self.name} returned {scores.numel()} scores for {len(completions)} completions"
            )
        return torch.nan_to_num(scores, nan=self.min_value, posinf=self.max_value, neginf=self.min_value)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, weight={self.weight})"


def reference_size_of(size: tuple[int, int] | None) -> tuple[int, int] | None:
    """A validated (width, height) reference space for pixel thresholds (Seg-Zero: 840 x 840), or None."""
    if size is None:
        return None
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"reference_size must be (width, height) in pixels, got {size}")
    return (int(size[0]), int(size[1]))


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower() or "reward"
