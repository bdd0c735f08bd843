"""Box rewards: IoU with the GT box (original pixels) and mean absolute corner error (model pixels)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from samr1.rewards.base import Reward
from samr1.rewards.parsing import parse_answer
from samr1.sample import SegSample


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two (x1, y1, x2, y2) boxes with continuous area ((x2 - x1) * (y2 - y1)); 0 if the union is empty."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(iw, 0.0) * max(ih, 0.0)
    area_a = max(a[2] - a[0], 0.0) * max(a[3] - a[1], 0.0)
    area_b = max(b[2] - b[0], 0.0) * max(b[3] - b[1], 0.0)
    union = area_a + area_b - inter
    return float(inter / union) if union > 0 else 0.0


def box_l1(a: Sequence[float], b: Sequence[float]) -> float:
    """Mean absolute difference of the four coordinates."""
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).mean())


def to_original(sample: SegSample, xy: Sequence) -> np.ndarray:
    """Model-space points [..., 2] or boxes [..., 4] -> the sample's original pixels (identity without transform)."""
    xy = np.asarray(xy, dtype=np.float64)
    return xy if sample.transform is None else sample.transform.to_original(xy)


def to_model(sample: SegSample, xy: Sequence) -> np.ndarray:
    """Original pixels -> the model's input space (identity without transform)."""
    xy = np.asarray(xy, dtype=np.float64)
    return xy if sample.transform is None else sample.transform.to_model(xy)


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
        return box_iou(to_original(sample, answer.box), sample.box)


class BoxL1Reward(Reward):
    """Mean absolute error between the answer's box and the GT box, both in the model's input space.

    `threshold` mapping: 1 if the error < `threshold` px else 0 (Seg-Zero: 10 px at 840 x 840).
    `continuous`: max(0, 1 - error / `scale`). An answer without a usable box, or a sample without a GT box,
    scores 0.
    """

    def __init__(
        self,
        weight: float = 1.0,
        name: str | None = None,
        mapping: Literal["threshold", "continuous"] = "threshold",
        threshold: float = 10.0,
        scale: float = 100.0,
    ):
        super().__init__(weight=weight, name=name or "box_l1")
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
            err = box_l1(answer.box, to_model(sample, sample.box))
            errors.append(err)
            if self.mapping == "continuous":
                out.append(max(0.0, 1.0 - err / self.scale))
            else:
                out.append(float(err < self.threshold))
        self.details["l1"] = torch.tensor(errors, dtype=torch.float32)
        return torch.tensor(out, dtype=torch.float32)
