"""Evaluation metrics with LISA's semantics, as torchmetrics classes whose states are sums.

Every state is registered with `dist_reduce_fx="sum"` and holds integers, so a split evaluated by any number
of processes, in any order, gives bit-identical results: intersections, unions and counts are int64, and the
per-sample IoUs behind gIoU are summed in fixed point (int64 units of 2**-40, i.e. 9e-13 per sample; exact
for IoU 0 and 1). Float sums would depend on how the samples were split across processes.

Semantics (recipe section 4): target pixels are == 1, pixels == 255 are ignored (in neither intersection nor
union), a prediction of None (an unparseable answer) is an empty mask, an empty prediction against an empty
target scores 1.0, gIoU is the mean per-sample IoU and cIoU the total intersection over the total union.
No sample is ever skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchmetrics import Metric

from samr1.geometry import as_numpy, box_iou, intersection_union, sample_iou  # noqa: F401 (re-exported)

IOU_SCALE = 2**40  # fixed-point unit of the summed per-sample IoUs (int64 holds 8 million samples' worth)

REASONSEG_GROUPS = ("short", "long")


class GroupedSegmentationIoU(Metric):
    """gIoU and cIoU per group of samples and overall (e.g. ReasonSeg's short queries / long sentences).

    `update(preds, targets, groups)`: `groups` gives each sample's group name (one of `groups`).
    `compute()` -> {"giou", "ciou"} over all samples, plus {"<group>/giou", "<group>/ciou"} for each group
    and "<group>/count"; fractions in [0, 1] as float64 tensors (NaN for a group without samples).
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, groups: Sequence[str] = REASONSEG_GROUPS, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.groups = tuple(groups)
        if len(set(self.groups)) != len(self.groups):
            raise ValueError(f"group names must be distinct, got {self.groups}")
        zeros = torch.zeros(max(len(self.groups), 1), dtype=torch.int64)
        for name in ("intersection", "union", "iou_fixed", "count"):
            self.add_state(name, default=zeros.clone(), dist_reduce_fx="sum")

    def _add(self, preds: Sequence[Any], targets: Sequence[Any], indices: Sequence[int]) -> None:
        if not len(preds) == len(targets) == len(indices):
            raise ValueError(f"got {len(preds)} predictions, {len(targets)} targets, {len(indices)} groups")
        sums = np.zeros((4, self.count.numel()), dtype=np.int64)
        for pred, target, index in zip(preds, targets, indices):
            i, u = intersection_union(pred, target)
            sums[:, index] += (i, u, round(sample_iou(i, u) * IOU_SCALE), 1)
        delta = torch.from_numpy(sums).to(self.count.device)
        self.intersection += delta[0]
        self.union += delta[1]
        self.iou_fixed += delta[2]
        self.count += delta[3]

    def update(self, preds: Sequence[Any], targets: Sequence[Any], groups: Sequence[str]) -> None:
        index = {name: i for i, name in enumerate(self.groups)}
        unknown = sorted({g for g in groups if g not in index})
        if unknown:
            raise ValueError(f"unknown groups {unknown}; expected one of {self.groups}")
        self._add(preds, targets, [index[g] for g in groups])

    @staticmethod
    def _fractions(intersection, union, iou_fixed, count) -> tuple[torch.Tensor, torch.Tensor]:
        giou = iou_fixed.double() / IOU_SCALE / count.double() if count > 0 else torch.tensor(float("nan"))
        ciou = (
            intersection.double() / union.double()
            if union > 0
            else torch.tensor(1.0 if count else float("nan"))
        )
        return giou.double(), ciou.double()

    def compute(self) -> dict[str, torch.Tensor]:
        totals = [state.sum() for state in (self.intersection, self.union, self.iou_fixed, self.count)]
        giou, ciou = self._fractions(*totals)
        result = {"giou": giou, "ciou": ciou}
        for i, name in enumerate(self.groups):
            giou, ciou = self._fractions(
                self.intersection[i], self.union[i], self.iou_fixed[i], self.count[i]
            )
            result.update(
                {f"{name}/giou": giou, f"{name}/ciou": ciou, f"{name}/count": self.count[i].clone()}
            )
        return result


class SegmentationIoU(GroupedSegmentationIoU):
    """gIoU and cIoU over a split: `update(preds, targets)`, `compute() -> {"giou", "ciou"}` (see module doc).

    `preds`: H x W boolean masks (numpy or tensors) or None for an unparseable answer; `targets`: uint8 masks
    with 255 = ignored. An empty target with any prediction still counts (IoU 0 unless the prediction is empty
    too, then 1.0); its pixels join the totals behind cIoU."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(groups=(), **kwargs)

    def update(self, preds: Sequence[Any], targets: Sequence[Any]) -> None:  # type: ignore[override]
        self._add(preds, targets, [0] * len(preds))


class BoxAccuracy(Metric):
    """Fraction of samples whose predicted box has IoU > `threshold` (0.5) with the GT box (referring
    expression comprehension accuracy). `update(pred_boxes, target_boxes)`: (x1, y1, x2, y2) boxes in the same
    pixel space; a None prediction (no parseable box) is a miss. GT boxes must be given."""

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, threshold: float = 0.5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.threshold = threshold
        self.add_state("hits", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, pred_boxes: Sequence[Any], target_boxes: Sequence[Any]) -> None:
        if len(pred_boxes) != len(target_boxes):
            raise ValueError(f"got {len(pred_boxes)} predicted boxes and {len(target_boxes)} GT boxes")
        hits = 0
        for pred, target in zip(pred_boxes, target_boxes):
            if target is None:
                raise ValueError("BoxAccuracy needs a GT box for every sample")
            hits += (
                pred is not None
                and box_iou(as_numpy(pred).tolist(), as_numpy(target).tolist()) > self.threshold
            )
        self.hits += hits
        self.total += len(pred_boxes)

    def compute(self) -> torch.Tensor:
        return self.hits.double() / self.total.double() if self.total > 0 else torch.tensor(float("nan"))


class ExactMean(Metric):
    """Mean of per-sample values (e.g. a reward on the evaluation's answers), summed in the fixed point of the
    per-sample IoUs behind gIoU, so the result does not depend on how samples were split across processes and
    a value equal to each sample's IoU averages to exactly gIoU. `update(values)`: finite floats."""

    full_state_update = False
    is_differentiable = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("total_fixed", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, values: Any) -> None:
        values = as_numpy(values).astype(np.float64).reshape(-1)
        if not np.isfinite(values).all():
            raise ValueError("ExactMean needs finite values")
        self.total_fixed += int(sum(round(float(v) * IOU_SCALE) for v in values))
        self.count += len(values)

    def compute(self) -> torch.Tensor:
        if self.count == 0:
            return torch.tensor(float("nan"), dtype=torch.float64)
        return self.total_fixed.double() / IOU_SCALE / self.count.double()


class ParseFailureRate(Metric):
    """Fraction of answers that failed: `update(answers)` counts each None as a failure (evaluation passes
    None for an answer that does not parse and for one that parses but holds neither a box nor points)."""

    full_state_update = False
    higher_is_better = False
    is_differentiable = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("failures", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, answers: Sequence[Any]) -> None:
        self.failures += sum(answer is None for answer in answers)
        self.total += len(answers)

    def compute(self) -> torch.Tensor:
        return self.failures.double() / self.total.double() if self.total > 0 else torch.tensor(float("nan"))


def reasonseg_group(is_sentence: bool) -> str:
    """ReasonSeg's report group of a sample: "long" for a sentence query, "short" for a short phrase."""
    return "long" if is_sentence else "short"
