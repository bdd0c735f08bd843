"""Multi-object box reward: Hungarian matching of the answer's boxes to the GT objects' boxes.

For benchmarks whose target is several objects (SocioSeg: every school of a tile), the model answers a JSON list
`[{"bbox": [...], "points_1": [...], "points_2": [...]}, ...]`. VisionReasoner and SocioReasoner reward such an
answer by matching predicted to GT boxes one-to-one (Hungarian algorithm) and normalising by the larger count,
so that both missing and surplus objects cost reward.

The score, precisely (all boxes in the `reference_size` space: the original image stretched to 840 x 840 by
default, where Seg-Zero's 10 px threshold is defined, whatever size the model sees; None: the model's space):

- For a predicted box p and a GT box g: `hit_iou = IoU(p, g) > iou_threshold` (0.5) and
  `hit_l1 = mean(|p - g|) < l1_threshold` (10 px, Seg-Zero's BoxL1 threshold at 840 x 840).
- The pair's score is `hit_iou + hit_l1` (0, 1 or 2) with `criterion="sum"`, the score of VisionReasoner's
  and SocioReasoner's box terms; with `criterion="both"` it is 1 if both hold, else 0.
- The assignment maximises the total pair score (`scipy.optimize.linear_sum_assignment`); the reward is that
  total / max(#pred, #GT), so in [0, 2] ("sum") or [0, 1] ("both": the share of matched pairs).
- A predicted object without a usable box counts in #pred but matches nothing. An answer with no objects
  for a sample without GT objects scores the maximum (nothing to find, nothing predicted); an unparseable
  answer scores 0.

IoU uses continuous areas (`box_iou`'s convention, pixel-edge boxes); SocioReasoner adds 1 to widths and
heights (inclusive pixel boxes), which differs only for boxes a few pixels wide. IoU is the same in original,
model and reference pixels (both areas scale by the same factor), so everything is computed in one space.

GT boxes come from `sample.meta["gt_boxes"]` (original pixels, `[x1, y1, x2, y2]` each; SocioSeg fills it with
`component_boxes` of the mask); without that key, from the connected components of `sample.mask`, else
`[sample.box]`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from samr1.answer import parse_answer
from samr1.geometry import BoxLike, box_iou_matrix, box_l1_matrix, component_boxes
from samr1.rewards.base import Reward, reference_size_of
from samr1.sample import SegSample

Criterion = Literal["sum", "both"]


def pair_scores(
    pred: Sequence[BoxLike] | np.ndarray,
    gt: Sequence[BoxLike] | np.ndarray,
    iou_threshold: float = 0.5,
    l1_threshold: float = 10.0,
    criterion: Criterion = "sum",
) -> np.ndarray:
    """[P, G] score of each (predicted, GT) pair: [IoU > t] + [L1 < t] ("sum") or both ("both")."""
    hit_iou = box_iou_matrix(pred, gt) > iou_threshold
    hit_l1 = box_l1_matrix(pred, gt) < l1_threshold
    if criterion == "sum":
        return hit_iou.astype(np.float64) + hit_l1.astype(np.float64)
    if criterion == "both":
        return (hit_iou & hit_l1).astype(np.float64)
    raise ValueError(f"criterion must be 'sum' or 'both', got {criterion!r}")


def hungarian_match(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the one-to-one assignment maximising the total score of a [P, G] matrix
    (min(P, G) pairs; empty when either side is empty)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    rows, cols = linear_sum_assignment(scores, maximize=True)
    return rows.astype(np.int64), cols.astype(np.int64)


def match_reward(
    pred: Sequence[BoxLike | None],
    gt: Sequence[BoxLike],
    iou_threshold: float = 0.5,
    l1_threshold: float = 10.0,
    criterion: Criterion = "sum",
) -> tuple[float, int]:
    """(reward, fully matched pairs) of predicted boxes (None: an object without a box) against GT boxes, in
    the same pixel space: the best assignment's total pair score / max(#pred, #GT). See the module doc."""
    if criterion not in ("sum", "both"):
        raise ValueError(f"criterion must be 'sum' or 'both', got {criterion!r}")
    top = 2.0 if criterion == "sum" else 1.0
    n = max(len(pred), len(gt))
    if n == 0:
        return top, 0
    scores = np.zeros((len(pred), len(gt)))
    valid = [i for i, box in enumerate(pred) if box is not None]
    if valid and len(gt):
        scores[valid] = pair_scores([pred[i] for i in valid], gt, iou_threshold, l1_threshold, criterion)
    rows, cols = hungarian_match(scores)
    chosen = scores[rows, cols]
    return float(chosen.sum() / n), int((chosen == top).sum())


def gt_boxes_of(sample: SegSample) -> list[tuple[float, ...]] | None:
    """The sample's GT object boxes in original pixels (see the module doc); None when it has no GT at all."""
    if "gt_boxes" in sample.meta:
        return [tuple(float(v) for v in box) for box in sample.meta["gt_boxes"]]
    if sample.mask is not None:
        return component_boxes(sample.target)
    if sample.box is not None:
        return [tuple(sample.box)]
    return None


class MultiObjectMatchReward(Reward):
    """Hungarian box matching of a list answer against every GT object (VisionReasoner / SocioReasoner).

    See the module doc for the exact score. `criterion="sum"` (default) gives each matched pair 1 for
    IoU > `iou_threshold` plus 1 for L1 < `l1_threshold`, as the references do (reward in [0, 2]);
    `criterion="both"` counts a pair only when both hold (reward in [0, 1]). Logged details: `matched`
    (pairs meeting both criteria), `num_pred`, `num_gt`.
    """

    def __init__(
        self,
        weight: float = 1.0,
        name: str | None = None,
        iou_threshold: float = 0.5,
        l1_threshold: float = 10.0,
        criterion: Criterion = "sum",
        reference_size: tuple[int, int] | None = (840, 840),
    ) -> None:
        super().__init__(weight=weight, name=name or "multi_object_match")
        self.reference_size = reference_size_of(reference_size)
        if criterion not in ("sum", "both"):
            raise ValueError(f"criterion must be 'sum' or 'both', got {criterion!r}")
        self.iou_threshold = float(iou_threshold)
        self.l1_threshold = float(l1_threshold)
        self.criterion = criterion
        self.max_value = 2.0 if criterion == "sum" else 1.0

    def score(self, completions: list[str], samples: list[SegSample]) -> torch.Tensor:
        scores, matched, num_pred, num_gt = [], [], [], []
        for completion, sample in zip(completions, samples):
            answer = parse_answer(completion)
            gt = gt_boxes_of(sample)
            num_gt.append(float("nan") if gt is None else float(len(gt)))
            if answer is None or gt is None:
                scores.append(0.0)
                matched.append(0.0)
                num_pred.append(float("nan") if answer is None else float(len(answer.objects)))
                continue
            size = self.reference_size
            pred = [
                None if obj.box is None else tuple(sample.model_to_reference(obj.box, size).tolist())
                for obj in answer.objects
            ]
            gt_ref = sample.original_to_reference(np.asarray(gt).reshape(-1, 4), size) if gt else []
            gt_ref = [tuple(box) for box in np.asarray(gt_ref).reshape(-1, 4).tolist()]
            value, hits = match_reward(pred, gt_ref, self.iou_threshold, self.l1_threshold, self.criterion)
            scores.append(value)
            matched.append(float(hits))
            num_pred.append(float(len(pred)))
        self.details = {
            "matched": torch.tensor(matched, dtype=torch.float32),
            "num_pred": torch.tensor(num_pred, dtype=torch.float32),
            "num_gt": torch.tensor(num_gt, dtype=torch.float32),
        }
        return torch.tensor(scores, dtype=torch.float32)
