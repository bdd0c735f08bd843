"""The one answer -> SAM prompt -> mask path, shared by the mask reward, evaluation, the prediction writer and
the dashboards, so that a reward's IoU and an evaluation's IoU are computed from the same mask.

An answer is anything with the parsed answer's attributes (`box`: (x1, y1, x2, y2) or None, `points`: list of
(x, y), `objects`: the objects of a list answer), in the model's input space; `sample.to_original` maps it to
original pixels, where SAM runs. `SegmentRule` says which parts prompt SAM, whether a list answer prompts it
once per object (masks united), and which of SAM's masks is kept:

- `"best"`: SAM's multimask output (three masks), the one with the highest predicted IoU. This is what the
  field's evaluation does (LISA, Seg-Zero, VisionReasoner call SAM with multimask output and keep the top
  score) and samr1's default for rewards and evaluation alike.
- `"single"`: SAM's single-mask output (`multimask_output=False`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from samr1.geometry import as_numpy
from samr1.sample import SegSample

MaskSelection = Literal["best", "single"]
PromptParts = Literal["box", "points", "box+points"]
MASK_SELECTIONS = ("best", "single")
PROMPT_PARTS = ("box", "points", "box+points")

Prompt = tuple[np.ndarray | None, np.ndarray | None]  # (box [4], points [P, 2]) in original pixels


@dataclass(frozen=True)
class SegmentRule:
    """How an answer becomes SAM prompts and which of SAM's masks is kept (module doc)."""

    selection: MaskSelection = "best"
    prompt: PromptParts = "box+points"
    multi_object: bool = False

    def __post_init__(self) -> None:
        if self.selection not in MASK_SELECTIONS:
            raise ValueError(f"mask selection must be one of {MASK_SELECTIONS}, got {self.selection!r}")
        if self.prompt not in PROMPT_PARTS:
            raise ValueError(f"prompt must be one of {PROMPT_PARTS}, got {self.prompt!r}")

    @property
    def multimask(self) -> bool:
        return self.selection == "best"


def answer_prompts(answer: Any, sample: SegSample, rule: SegmentRule) -> list[Prompt]:
    """One (box, points) prompt in original pixels per object the rule reads (the first object, or every
    object of a list answer with `multi_object`); objects giving none of the configured parts are left out.
    An unparsed answer (None) gives none."""
    if answer is None:
        return []
    objects = list(answer.objects) if rule.multi_object and answer.objects else [answer]
    prompts = []
    for obj in objects:
        box = sample.to_original(obj.box) if "box" in rule.prompt and obj.box is not None else None
        points = sample.to_original(obj.points) if "points" in rule.prompt and obj.points else None
        if box is not None or points is not None:
            prompts.append((box, points))
    return prompts


def image_key(sample: SegSample) -> tuple[str, str]:
    """What identifies a sample's image across calls (the embedding cache's key): its file, else its id."""
    return ("path", str(sample.image_path)) if sample.image_path is not None else ("id", str(sample.id))


def segment_answers(
    segmenter: Any, samples: list[SegSample], answers: list[Any], rule: SegmentRule
) -> tuple[list[np.ndarray | None], np.ndarray]:
    """SAM's masks for many answers: ([mask or None per answer], float32 [N] SAM scores).

    A mask is bool H x W at the sample's original size, the union over the answer's prompts; None when the
    answer gives SAM no prompt. The score is SAM's predicted IoU of the first prompt's kept mask (NaN without
    one). Answers on one image share one image encoding (by `image_key`; the segmenter's cache may keep it
    across calls), and its prompts are decoded in one batch per prompt layout (box or not, number of points).
    """
    if len(samples) != len(answers):
        raise ValueError(f"{len(answers)} answers for {len(samples)} samples")
    masks: list[np.ndarray | None] = [None] * len(samples)
    scores = np.full(len(samples), np.nan, dtype=np.float32)
    by_image: dict[tuple[str, str], list[int]] = {}
    for i, sample in enumerate(samples):
        by_image.setdefault(image_key(sample), []).append(i)
    for indices in by_image.values():
        _segment_image(segmenter, samples, answers, rule, indices, masks, scores)
    return masks, scores


def segment_answer(segmenter: Any, sample: SegSample, answer: Any, rule: SegmentRule) -> np.ndarray | None:
    """SAM's mask (bool H x W, original pixels) for one answer under `rule`; None when it has no prompt."""
    masks, _ = segment_answers(segmenter, [sample], [answer], rule)
    return masks[0]


def _segment_image(segmenter, samples, answers, rule, indices, masks, scores) -> None:
    layouts: dict[tuple[bool, int], list[tuple[int, int, np.ndarray | None, np.ndarray | None]]] = {}
    for i in indices:
        for j, (box, points) in enumerate(answer_prompts(answers[i], samples[i], rule)):
            layout = (box is not None, 0 if points is None else len(points))
            layouts.setdefault(layout, []).append((i, j, box, points))
    if not layouts:
        return
    sample = samples[indices[0]]
    image = np.asarray(sample.load_image())
    for i in indices:
        if samples[i].mask is not None and samples[i].mask.shape != image.shape[:2]:
            raise ValueError(
                f"sample {samples[i].id!r}: mask shape {samples[i].mask.shape} differs from image size "
                f"{image.shape[:2]}"
            )
    embed = getattr(segmenter, "embed", None)
    embedding = embed(image, key=image_key(sample)) if embed is not None else None
    for (has_box, n_points), entries in layouts.items():
        boxes = np.stack([e[2] for e in entries]) if has_box else None
        points = np.stack([e[3] for e in entries]) if n_points else None
        labels = np.ones((len(entries), n_points), dtype=np.int64) if n_points else None
        if embedding is not None:
            out_masks, out_scores = segmenter.decode(embedding, boxes, points, labels, rule.multimask)
        else:  # a segmenter with only predict() (encodes per call)
            out_masks, out_scores = segmenter.predict(image, boxes, points, labels, rule.multimask)
        out_masks = as_numpy(out_masks).astype(bool, copy=False)
        out_scores = as_numpy(out_scores).astype(np.float32, copy=False).reshape(-1)
        for k, (i, j, _, _) in enumerate(entries):
            masks[i] = out_masks[k].copy() if masks[i] is None else masks[i] | out_masks[k]
            if j == 0:
                scores[i] = out_scores[k]


class AnswerSegmenter:
    """`segment_answers` bound to one segmenter and the run's mask selection (`model.mask_selection`).

    GRPOModule builds one and hands it to the mask rewards (`RewardContext.segment`), to evaluation and to the
    prediction writer, so a reward's mask and an evaluation's mask for the same answer are the same mask.
    """

    def __init__(self, segmenter: Any, selection: MaskSelection = "best") -> None:
        SegmentRule(selection=selection)  # validates
        self.segmenter = segmenter
        self.selection = selection

    def rule(self, prompt: PromptParts = "box+points", multi_object: bool = False) -> SegmentRule:
        return SegmentRule(selection=self.selection, prompt=prompt, multi_object=multi_object)

    def __call__(
        self,
        samples: list[SegSample],
        answers: list[Any],
        prompt: PromptParts = "box+points",
        multi_object: bool = False,
    ) -> tuple[list[np.ndarray | None], np.ndarray]:
        """(masks, SAM scores) as `segment_answers` gives them, under this run's mask selection."""
        return segment_answers(self.segmenter, samples, answers, self.rule(prompt, multi_object))

    def __repr__(self) -> str:
        return f"AnswerSegmenter({type(self.segmenter).__name__}, selection={self.selection!r})"
