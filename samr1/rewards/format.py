"""Format rewards: the think/answer layout of the whole output, and the answer's JSON keys."""

from __future__ import annotations

import math
import re
from typing import Any, Literal

import torch

from samr1.answer import parse_answer
from samr1.rewards.base import Reward
from samr1.sample import SegSample

# Seg-Zero's rule: the whole output is one think block then one answer block.
THINK_ANSWER_PATTERN = r"<think>.*?</think>\s*<answer>.*?</answer>"

# Seg-Zero's answer: one box and the centres of the two largest inscribed circles.
SEGZERO_KEYS = {"bbox": 4, "points_1": 2, "points_2": 2}


class ThinkFormatReward(Reward):
    """1 if the whole completion fullmatches `pattern` (DOTALL), else 0."""

    def __init__(self, weight: float = 1.0, name: str | None = None, pattern: str = THINK_ANSWER_PATTERN):
        super().__init__(weight=weight, name=name or "think_format")
        self.pattern = re.compile(pattern, re.DOTALL)

    def score(self, completions: list[str], samples: list[SegSample]) -> torch.Tensor:
        return torch.tensor([float(self.pattern.fullmatch(c) is not None) for c in completions])


class AnswerFormatReward(Reward):
    """Whether the `<answer>` body has the expected keys.

    `strict`: the body is one object whose keys are exactly `keys` (default Seg-Zero's bbox[4], points_1[2],
    points_2[2]), each a list of that many finite numbers -> 1, else 0. With `allow_list`, a list of objects
    scores the fraction of its objects that pass (an empty list scores 0); without it a list scores 0.
    `lenient`: 1 if the answer parses and its first object has a usable box or point.
    """

    def __init__(
        self,
        weight: float = 1.0,
        name: str | None = None,
        mode: Literal["strict", "lenient"] = "strict",
        keys: dict[str, int] | None = None,
        allow_list: bool = False,
    ):
        super().__init__(weight=weight, name=name or "answer_format")
        if mode not in ("strict", "lenient"):
            raise ValueError(f"mode must be 'strict' or 'lenient', got {mode!r}")
        self.mode = mode
        self.keys = dict(SEGZERO_KEYS if keys is None else keys)
        self.allow_list = allow_list

    def score(self, completions: list[str], samples: list[SegSample]) -> torch.Tensor:
        return torch.tensor([self._one(c) for c in completions])

    def _one(self, completion: str) -> float:
        answer = parse_answer(completion)
        if answer is None:
            return 0.0
        if self.mode == "lenient":
            return float(answer.box is not None or bool(answer.points))
        if isinstance(answer.raw, dict):
            return float(self._strict_object(answer.raw))
        if self.allow_list and answer.raw:
            return sum(self._strict_object(o) for o in answer.raw) / len(answer.raw)
        return 0.0

    def _strict_object(self, obj: Any) -> bool:
        if not isinstance(obj, dict) or set(obj) != set(self.keys):
            return False
        return all(_is_numbers(obj[k], n) for k, n in self.keys.items())


def _is_numbers(value: Any, n: int) -> bool:
    return (
        isinstance(value, list)
        and len(value) == n
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and _finite(v) for v in value)
    )


def _finite(v: int | float) -> bool:
    try:
        return math.isfinite(v)
    except OverflowError:  # an int too large for a float is not a coordinate
        return False
