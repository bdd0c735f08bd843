"""The SAM-R1 reward: prompt a frozen SAM with the answer's box and/or points, score the mask against the GT.

The mask comes from the run's one answer -> SAM prompt -> mask path (`RewardContext.segment`, an
`samr1.sam.segment.AnswerSegmenter`), the same path and mask selection evaluation uses, so the reward's IoU of
an answer is the evaluation's IoU of that answer. That path keeps the batching: per step, the completions of
one image share one image encoding, and their prompts are decoded in one batch per prompt layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch

from samr1.answer import parse_answer
from samr1.geometry import mask_iou
from samr1.rewards.base import Reward, RewardContext
from samr1.sample import SegSample

SAMR1_TIERS = ((0.8, 4.0), (0.7, 3.0), (0.5, 2.0))


def tiered(iou: float, tiers: Sequence[Sequence[float]], floor: float = 0.0) -> float:
    """The value of the highest tier whose threshold `iou` strictly exceeds; `floor` if none (SAM-R1: > 0.8 -> 4,
    > 0.7 -> 3, > 0.5 -> 2, else 0)."""
    for threshold, value in sorted(tiers, key=lambda t: t[0], reverse=True):
        if iou > threshold:
            return float(value)
    return floor


class MaskIoUReward(Reward):
    """IoU of SAM's mask for the answer's prompt with `sample.mask`, mapped to a reward.

    `prompt`: which parts of the (first object of the) answer prompt SAM, mapped to original pixels; a part
    the answer lacks is left out, and an answer with none of the configured parts scores the minimum (as does
    a sample without a mask). Which of SAM's masks is kept is the run's rule, `model.mask_selection` ("best":
    the highest predicted IoU of SAM's three, as evaluation does; "single": SAM's single-mask output).
    `multimask` is the old per-reward switch: leave it unset; a value that disagrees with the run's rule is an
    error at setup. `mapping`: `tiered` (value of the highest tier with IoU > threshold, else 0), `continuous`
    (the IoU) or `threshold` (1 if IoU > `threshold`). Raw IoUs go to `details["iou"]`; the masks of the last
    call stay in `last_masks` (one bool H x W array, or None, per completion) for dashboards. `multi_object`:
    a list answer prompts SAM once per object and the union of the masks is scored (SocioSeg); otherwise the
    first object.
    """

    def __init__(
        self,
        weight: float = 1.0,
        name: str | None = None,
        prompt: Literal["box", "points", "box+points"] = "box+points",
        multimask: bool | None = None,
        mapping: Literal["tiered", "continuous", "threshold"] = "tiered",
        tiers: tuple[tuple[float, float], ...] = SAMR1_TIERS,
        threshold: float = 0.5,
        multi_object: bool = False,
    ):
        super().__init__(weight=weight, name=name or "mask_iou")
        self.multi_object = bool(multi_object)
        if prompt not in ("box", "points", "box+points"):
            raise ValueError(f"prompt must be 'box', 'points' or 'box+points', got {prompt!r}")
        if mapping not in ("tiered", "continuous", "threshold"):
            raise ValueError(f"mapping must be 'tiered', 'continuous' or 'threshold', got {mapping!r}")
        self.prompt = prompt
        self.multimask = multimask
        self.mapping = mapping
        self.tiers = tuple((float(t), float(v)) for t, v in tiers)
        if mapping == "tiered" and not self.tiers:
            raise ValueError("tiered mapping needs at least one (threshold, value) tier")
        self.threshold = float(threshold)
        if mapping == "tiered":
            self.min_value = min(0.0, *(v for _, v in self.tiers))
            self.max_value = max(v for _, v in self.tiers)
        self.segment: Any | None = None
        self.last_masks: list[np.ndarray | None] = []

    def setup(self, context: RewardContext) -> None:
        if context.segmenter is None and context.segment is None:
            raise ValueError(
                f"{self.name}: MaskIoUReward needs SAM: set model.sam_checkpoint (and model.sam_model_type / "
                "model.sam_backend) so the trainer can build a segmenter"
            )
        if context.segment is None:
            raise ValueError(
                f"{self.name}: RewardContext.segment is not set; pass the run's answer segmenter, "
                "RewardContext(segmenter=sam, segment=samr1.sam.segment.AnswerSegmenter(sam, 'best')) "
                "(GRPOModule does this)"
            )
        selection = context.segment.selection
        if self.multimask is not None and self.multimask != (selection == "best"):
            raise ValueError(
                f"{self.name}: multimask={self.multimask} disagrees with model.mask_selection={selection!r}; "
                "the mask selection is set once for rewards and evaluation (model.mask_selection: best | "
                "single): remove multimask from the reward's init_args"
            )
        self.segment = context.segment

    def score(self, completions: list[str], samples: list[SegSample]) -> torch.Tensor:
        if self.segment is None:
            raise RuntimeError(f"{self.name}: call setup(RewardContext(...)) before scoring")
        # A sample without a GT mask has nothing to score against: SAM is not run for it.
        answers = [parse_answer(c) if s.mask is not None else None for c, s in zip(completions, samples)]
        masks, sam_scores = self.segment(samples, answers, self.prompt, self.multi_object)
        ious = np.zeros(len(completions), dtype=np.float64)
        usable = np.zeros(len(completions), dtype=bool)
        for i, (mask, sample) in enumerate(zip(masks, samples)):
            if mask is not None:
                ious[i] = mask_iou(mask, sample.mask)
                usable[i] = True
        self.last_masks = masks
        self.details["iou"] = torch.from_numpy(ious)
        self.details["sam_score"] = torch.from_numpy(np.asarray(sam_scores, dtype=np.float32))
        values = [self._map(iou) if ok else self.min_value for iou, ok in zip(ious, usable)]
        return torch.tensor(values, dtype=torch.float64)

    def _map(self, iou: float) -> float:
        if self.mapping == "continuous":
            return float(iou)
        if self.mapping == "threshold":
            return float(iou > self.threshold)
        return tiered(iou, self.tiers, floor=0.0)
