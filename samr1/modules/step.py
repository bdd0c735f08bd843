"""The typed record of one training step (for callbacks and reports) and the step's phase bookkeeping."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from samr1.answer import Answer
from samr1.modules.prompting import PromptBatch
from samr1.modules.rollout import Rollouts
from samr1.sample import SegSample


@dataclass
class StepRecord:
    """What a training step produced: N = prompts x G completions, in groups of G per prompt."""

    step: int  # optimiser steps taken before this rollout batch
    prompts: PromptBatch
    rollouts: Rollouts
    answers: list[Answer | None]  # [N] parsed answers, model pixels (None: unparseable)
    total_reward: torch.Tensor  # [N] weighted sum of the rewards
    rewards: dict[str, torch.Tensor]  # name -> [N] each reward's unweighted scores
    advantages: torch.Tensor  # [N]
    masks: list[np.ndarray | None] | None = None  # [N] SAM's masks (original pixels) when a reward made them
    stats: dict[str, float] = field(default_factory=dict)  # what was logged under train/

    @property
    def samples(self) -> list[SegSample]:
        """[N] the sample each completion answers."""
        return [self.prompts.samples[i] for i in self.rollouts.prompt_index.tolist()]


class PhaseTimer:
    """Wall-clock seconds per named phase of a step: `with timer("update"): ...`; `timer.seconds`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        tic = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - tic


@contextmanager
def out_of_memory_hint(phase: str, prompts: int, group_size: int, lower: str):
    """Re-raise an out-of-memory error saying which phase ran out, at what batch and G, and what to lower."""
    try:
        yield
    except torch.OutOfMemoryError as err:
        raise torch.OutOfMemoryError(
            f"out of memory during {phase} with {prompts} prompts x G={group_size} completions; lower {lower} "
            f"(or use LoRA / configs/strategy/fsdp.yaml). Original error: {err}"
        ) from err
