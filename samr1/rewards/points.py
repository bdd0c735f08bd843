"""Point rewards: predicted points inside the GT mask, or Seg-Zero's points-versus-GT-points rule."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from samr1.answer import parse_answer
from samr1.rewards.base import Reward, reference_size_of
from samr1.sample import SegSample


def point_accuracy(points: np.ndarray, mask: np.ndarray) -> float:
    """Fraction of (x, y) points whose pixel (floor) is target (== 1) in `mask`; outside the image or on an
    ignored pixel is a miss. 0 for no points."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(points) == 0:
        return 0.0
    h, w = mask.shape
    ix = np.floor(points[:, 0])
    iy = np.floor(points[:, 1])
    inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
    hits = np.zeros(len(points), dtype=bool)
    hits[inside] = mask[iy[inside].astype(np.int64), ix[inside].astype(np.int64)] == 1
    return float(hits.mean())


def matched_mean_distance(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean Euclidean distance between two equally long point sets under the best one-to-one assignment."""
    from scipy.optimize import linear_sum_assignment

    pred = np.asarray(pred, dtype=np.float64).reshape(-1, 2)
    gt = np.asarray(gt, dtype=np.float64).reshape(-1, 2)
    cost = np.linalg.norm(pred[:, None, :] - gt[None, :, :], axis=-1)
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].mean())


def points_in_box(points: np.ndarray, box: Sequence[float]) -> bool:
    """Whether every (x, y) lies in the (x1, y1, x2, y2) box, borders included."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return bool(np.all((p[:, 0] >= box[0]) & (p[:, 0] <= box[2]) & (p[:, 1] >= box[1]) & (p[:, 1] <= box[3])))


class PointReward(Reward):
    """Reward for the answer's (first object's) points.

    `accuracy`: fraction of predicted points, mapped to original pixels, that fall on target pixels of
    `sample.mask` (0 without points; 0 for a sample without a mask).
    `segzero` (Seg-Zero's rule): 1 if every predicted point lies inside the predicted box (as written) and the
    mean distance to the GT points under the better assignment is < `distance_threshold` px, measured in the
    `reference_size` space (the original image stretched to it: Seg-Zero's 840 x 840, whatever size the model
    sees; None: the model's input space), else 0. Needs as many predicted points as GT points (two in
    Seg-Zero) and a predicted box; a sample without GT points scores 0.
    """

    def __init__(
        self,
        weight: float = 1.0,
        name: str | None = None,
        mode: Literal["accuracy", "segzero"] = "accuracy",
        distance_threshold: float = 100.0,
        reference_size: tuple[int, int] | None = (840, 840),
    ):
        super().__init__(weight=weight, name=name or "point")
        self.reference_size = reference_size_of(reference_size)
        if mode not in ("accuracy", "segzero"):
            raise ValueError(f"mode must be 'accuracy' or 'segzero', got {mode!r}")
        self.mode = mode
        self.distance_threshold = float(distance_threshold)

    def score(self, completions: list[str], samples: list[SegSample]) -> torch.Tensor:
        one = self._accuracy if self.mode == "accuracy" else self._segzero
        return torch.tensor([one(c, s) for c, s in zip(completions, samples)], dtype=torch.float32)

    def _accuracy(self, completion: str, sample: SegSample) -> float:
        answer = parse_answer(completion)
        if answer is None or not answer.points or sample.mask is None:
            return 0.0
        return point_accuracy(sample.to_original(answer.points), sample.mask)

    def _segzero(self, completion: str, sample: SegSample) -> float:
        answer = parse_answer(completion)
        if answer is None or answer.box is None or not answer.points or not sample.points:
            return 0.0
        if len(answer.points) != len(sample.points) or not points_in_box(answer.points, answer.box):
            return 0.0
        size = self.reference_size
        distance = matched_mean_distance(
            sample.model_to_reference(answer.points, size), sample.original_to_reference(sample.points, size)
        )
        return float(distance < self.distance_threshold)
