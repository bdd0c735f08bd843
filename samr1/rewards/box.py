"""Box rewards: IoU with the GT box (original pixels) and mean absolute corner error (model pixels)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from samr1.answer import parse_answer
from samr1.geometry import box_iou, box_l1
from samr1.rewards.base import Reward, reference_size_of
from samr1.sample import SegSample


def to_original(sample: SegSample, xy: Sequence) -> np.ndarray:
    """Kept for old imports: `sample.to_original(xy)`."""
    return sample.to_original(xy)


def to_model(sample: SegSample, xy: Sequence) -> np.ndarray:
    """Kept for old imports: `sample.to_model(xy)`."""
    return sample.to_model(xy)


class BoxIoUReward(Reward):
    """IoU of the answer's (first) box, mapped to original pixels, with `sample.box`.

    `threshold` mapping: 1 if IoU > `threshold` else 0 (Seg-Zero: 0.5). `continuous`: the IoU itself.
    An answer without a usable box, or a sample without a GT box, scores 0.
    """

    def __init__(
        self,
        weight: float = 1.0,
        name: str | None = None,
        mapping: Literal["threshold", "continuous"] = "threshold",
        threshold: float = 0.5,
    ):
        super().__init__(weight=weight, name=name or "box_iou")
        if mapping not in ("threshold", "continuous"):
            raise ValueError(f"mapping must be 'threshold' or 'continuous', got {mapping!r}")
        self.mapping = mapping
        self.threshold = float(threshold)

    def score(self, completions: list[str], samples: list[SegSample]) -> torch.Tensor:
        ious = torch.tensor([self._iou(c, s) for c, s in zip(completions, samples)], dtype=torch.float32)
        self.details["iou"] = ious
        if self.mapping == "continuous":
            return ious.clamp(min=0.0)
        return (ious > self.threshold).float()

    def _iou(self, completion: str, sample: SegSample) -> float:
        answer = parse_answer(completion)
        if answer is None or answer.box is None or sample.box is None:
            return 0.0
        return box_iou(sample.to_original(answer.box), sample.box)


class BoxL1Reward(Reward):
    """Mean absolute error between the answer's box and the GT box, measured in the `reference_size` space.

    `threshold` mapping: 1 if the error < `threshold` px else 0 (Seg-Zero: 10 px at 840 x 840).
    `continuous`: max(0, 1 - error / `scale`). An answer without a usable box, or a sample without a GT box,
    scores 0. `reference_size`: the (width, height) the pixel thresholds are defined in, the original image
    stretched to it (Seg-Zero's 840 x 840), whatever size the model sees (smart resize included); with a fixed
    840 x 840 model input it is the model's own space. None: the model's input space.
    """

    def __init__(
        self,
        weight: float = 1.0,
        name: str | None = None,
        mapping: Literal["threshold", "continuous"] = "threshold",
        threshold: float = 10.0,
        scale: float = 100.0,
        reference_size: tuple[int, int] | None = (840, 840),
    ):
        super().__init__(weight=weight, name=name or "box_l1")
        self.reference_size = reference_size_of(reference_size)
        if mapping not in ("threshold", "continuous"):
            raise ValueError(f"mapping must be 'threshold' or 'continuous', got {mapping!r}")
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.mapping = mapping
        self.threshold = float(threshold)
        self.scale = float(scale)

    def score(self, completions: list[str], samples: list[SegSample]) -> torch.Tensor:
        out = []
        errors = []
        for completion, sample in zip(completions, samples):
            answer = parse_answer(completion)
            if answer is None or answer.box is None or sample.box is None:
                errors.append(float("nan"))  # no error to report; dashboards use nanmean
                out.append(0.0)
                continue
            size = self.reference_size
            err = box_l1(
                sample.model_to_reference(answer.box, size), sample.original_to_reference(sample.box, size)
            )
            errors.append(err)
            if self.mapping == "continuous":
                out.append(max(0.0, 1.0 - err / self.scale))
            else:
                out.append(float(err < self.threshold))
        self.details["l1"] = torch.tensor(errors, dtype=torch.float32)
        return torch.tensor(out, dtype=torch.float32)
