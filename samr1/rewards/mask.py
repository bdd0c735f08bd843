"""The SAM-R1 reward: prompt a frozen SAM with the answer's box and/or points, score the mask against the GT.

Per step, the completions of one image (G per prompt, and any other prompts on the same image) share one
image encoding: they are grouped by image, the image is embedded once, and the prompts are decoded in as few
batches as their shapes allow (one batch when every answer has the same prompt layout).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch

from samr1.geometry import as_numpy, mask_iou
from samr1.rewards.base import Reward, RewardContext
from samr1.rewards.parsing import Answer, parse_answer
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
    a sample without a mask). `multimask`: keep SAM's best-scoring of three masks instead of its single mask.
    `mapping`: `tiered` (value of the highest tier with IoU > threshold, else 0), `continuous` (the IoU) or
    `threshold` (1 if IoU > `threshold`). Raw IoUs go to `details["iou"]`; the masks of the last call stay in
    `last_masks` (one bool H x W array, or None, per completion) for dashboards. `multi_object`: a list answer
    prompts SAM once per object and the union of the masks is scored (SocioSeg); otherwise the first object.
    """

    def __init__(
        self,
        weight: float = 1.0,
        name: str | None = None,
        prompt: Literal["box", "points", "box+points"] = "box+points",
        multimask: bool = False,
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
        self.multimask = bool(multimask)
        self.mapping = mapping
        self.tiers = tuple((float(t), float(v)) for t, v in tiers)
        if mapping == "tiered" and not self.tiers:
            raise ValueError("tiered mapping needs at least one (threshold, value) tier")
        self.threshold = float(threshold)
        if mapping == "tiered":
            self.min_value = min(0.0, *(v for _, v in self.tiers))
            self.max_value = max(v for _, v in self.tiers)
        self.segmenter: Any | None = None
        self.last_masks: list[np.ndarray | None] = []

    def setup(self, context: RewardContext) -> None:
        if context.segmenter is None:
            raise ValueError(
                f"{self.name}: MaskIoUReward needs SAM: set model.sam_checkpoint (and model.sam_model_type / "
                "model.sam_backend) so the trainer can build a segmenter"
            )
        self.segmenter = context.segmenter

    def score(self, completions: list[str], samples: list[SegSample]) -> torch.Tensor:
        if self.segmenter is None:
            raise RuntimeError(f"{self.name}: call setup(RewardContext(segmenter=...)) before scoring")
        masks: list[np.ndarray | None] = [None] * len(completions)
        sam_scores = np.full(len(completions), np.nan, dtype=np.float32)
        for indices in _group_by_image(samples).values():
            self._predict_image(completions, samples, indices, masks, sam_scores)
        ious = np.zeros(len(completions), dtype=np.float64)
        usable = np.zeros(len(completions), dtype=bool)
        for i, (mask, sample) in enumerate(zip(masks, samples)):
            if mask is not None:
                ious[i] = mask_iou(mask, sample.mask)
                usable[i] = True
        self.last_masks = masks
        self.details["iou"] = torch.from_numpy(ious).float()
        self.details["sam_score"] = torch.from_numpy(sam_scores)
        values = [self._map(iou) if ok else self.min_value for iou, ok in zip(ious, usable)]
        return torch.tensor(values, dtype=torch.float32)

    def _map(self, iou: float) -> float:
        if self.mapping == "continuous":
            return float(iou)
        if self.mapping == "threshold":
            return float(iou > self.threshold)
        return tiered(iou, self.tiers, floor=0.0)

    def _prompt(
        self, answer: Answer | None, sample: SegSample
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(box [4], points [P, 2]) in original pixels, each None when not configured or not in the answer."""
        if answer is None:
            return None, None
        box = sample.to_original(answer.box) if "box" in self.prompt and answer.box is not None else None
        points = sample.to_original(answer.points) if "points" in self.prompt and answer.points else None
        return box, points

    def _predict_image(self, completions, samples, indices, masks, sam_scores) -> None:
        # Batches by prompt layout (box or not, number of points): SAM decodes same-shaped prompts together.
        layouts: dict[tuple[bool, int], list[tuple[int, np.ndarray | None, np.ndarray | None]]] = {}
        for i in indices:
            if samples[i].mask is None:
                continue
            answer = parse_answer(completions[i])
            objects = (
                answer.objects if self.multi_object and answer is not None and answer.objects else [answer]
            )
            for obj in objects:
                box, points = self._prompt(obj, samples[i])
                if box is None and points is None:
                    continue
                layouts.setdefault((box is not None, 0 if points is None else len(points)), []).append(
                    (i, box, points)
                )
        if not layouts:
            return
        sample = samples[next(iter(layouts.values()))[0][0]]  # one that has a mask
        image = np.asarray(sample.load_image())
        if image.shape[:2] != sample.mask.shape:
            raise ValueError(
                f"sample {sample.id!r}: mask shape {sample.mask.shape} differs from image size {image.shape[:2]}"
            )
        embed = getattr(self.segmenter, "embed", None)
        embedding = embed(image, key=image_key(sample)) if embed is not None else None
        for (has_box, n_points), entries in layouts.items():
            boxes = np.stack([e[1] for e in entries]) if has_box else None
            points = np.stack([e[2] for e in entries]) if n_points else None
            labels = np.ones((len(entries), n_points), dtype=np.int64) if n_points else None
            if embedding is not None:
                out_masks, out_scores = self.segmenter.decode(
                    embedding, boxes, points, labels, self.multimask
                )
            else:  # a segmenter with only predict() (encodes per call)
                out_masks, out_scores = self.segmenter.predict(image, boxes, points, labels, self.multimask)
            out_masks = as_numpy(out_masks).astype(bool, copy=False)
            out_scores = as_numpy(out_scores).astype(np.float32, copy=False).reshape(-1)
            for k, (i, _, _) in enumerate(entries):
                # Several objects of one answer: their masks unite; the score is the first object's.
                masks[i] = out_masks[k] if masks[i] is None else masks[i] | out_masks[k]
                if np.isnan(sam_scores[i]):
                    sam_scores[i] = out_scores[k]


def image_key(sample: SegSample) -> tuple[str, str]:
    """What identifies a sample's image across steps: its file when it has one, else its id."""
    return ("path", str(sample.image_path)) if sample.image_path is not None else ("id", str(sample.id))


def _group_by_image(samples: list[SegSample]) -> dict[tuple[str, str], list[int]]:
    groups: dict[tuple[str, str], list[int]] = {}
    for i, sample in enumerate(samples):
        groups.setdefault(image_key(sample), []).append(i)
    return groups
