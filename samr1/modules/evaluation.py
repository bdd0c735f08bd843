"""Evaluation as the field reports it (LISA's semantics): parse, SAM on original pixels, exact metrics.

Greedy answers are parsed; the box and points are mapped back to original pixels and given to SAM through
the run's one answer -> mask path (`samr1.sam.segment`, the mask rewards' path and mask selection: by default
the highest predicted IoU of SAM's multimask output). No sample is ever dropped: an answer that does not parse,
or holds neither a box nor points, is an empty prediction and counts as a parse failure.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from samr1.answer import Answer, parse_answer
from samr1.geometry import box_iou
from samr1.metrics import (
    BoxAccuracy,
    ExactMean,
    GroupedSegmentationIoU,
    ParseFailureRate,
    SegmentationIoU,
    intersection_union,
    reasonseg_group,
    sample_iou,
)
from samr1.models.qwen2_5_vl.loading import generation_defaults
from samr1.sam.segment import AnswerSegmenter, SegmentRule, answer_prompts, segment_answer  # noqa: F401
from samr1.sample import SegSample


@dataclass
class SampleResult:
    """One evaluated sample; everything but the mask goes to the per-sample JSONL."""

    id: str
    query: str
    completion: str
    box: list[float] | None = None  # original pixels
    points: list[list[float]] | None = None  # original pixels
    iou: float | None = None
    intersection: int | None = None
    union: int | None = None
    box_iou: float | None = None
    failure: str | None = None
    group: str | None = None
    mask: np.ndarray | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        row = asdict(self)
        row.pop("mask")
        return row


def sample_group(sample: SegSample) -> str | None:
    """The report group of a sample: meta["group"], or ReasonSeg's short/long from meta["is_sentence"]."""
    if "group" in sample.meta:
        return str(sample.meta["group"])
    if "is_sentence" in sample.meta:
        return reasonseg_group(bool(sample.meta["is_sentence"]))
    return None


def answer_objects(answer: Answer | None, multi_object: bool) -> list[Answer]:
    """The objects of an answer evaluation reads (the first, or all with `multi_object`) that have a prompt."""
    if answer is None:
        return []
    objects = list(answer.objects) if multi_object and answer.objects else [answer]
    return [o for o in objects if o.box is not None or o.points]


def decoding_settings(
    model_path: str, max_new_tokens: int, repetition_penalty: float | None = None
) -> dict[str, float | str]:
    """Greedy evaluation's settings: the checkpoint's generation_config (what HF `generate` applies) unless
    `repetition_penalty` overrides it; printed and saved with the results."""
    if repetition_penalty is not None:
        penalty, source = float(repetition_penalty), "model.eval_repetition_penalty"
    else:
        defaults = generation_defaults(model_path)
        penalty = defaults.get("repetition_penalty", 1.0)
        source = "generation_config.json" if defaults else "default"
    return {
        "decoding": "greedy",
        "max_new_tokens": max_new_tokens,
        "repetition_penalty": penalty,
        "repetition_penalty_source": source,
    }


def as_answer_segmenter(segmenter: Any) -> AnswerSegmenter | None:
    """The run's answer segmenter as given, or a bare segmenter wrapped with the default selection ("best")."""
    if segmenter is None or isinstance(segmenter, AnswerSegmenter):
        return segmenter
    return AnswerSegmenter(segmenter)


def evaluate_samples(
    texts: list[str], samples: list[SegSample], segmenter: Any, multi_object: bool = False
) -> list[SampleResult]:
    """One `SampleResult` per (completion, sample); SAM runs once per image for the whole batch.

    `segmenter`: the run's `AnswerSegmenter` (or a bare segmenter, then the "best" selection), or None (no
    masks). Boxes and points of the first object are reported in original pixels; the mask unites every
    object's mask with `multi_object`. Samples with a GT mask get intersection, union and IoU (LISA's rules).
    """
    segment = as_answer_segmenter(segmenter)
    answers = [parse_answer(text) for text in texts]
    masks: list[np.ndarray | None] = [None] * len(texts)
    if segment is not None:  # also without GT (predict on a user's image): the mask is the output
        masks, _ = segment(samples, answers, "box+points", multi_object)
    return [_result(t, s, a, m, multi_object) for t, s, a, m in zip(texts, samples, answers, masks)]


def evaluate_sample(text: str, sample: SegSample, segmenter: Any, multi_object: bool = False) -> SampleResult:
    return evaluate_samples([text], [sample], segmenter, multi_object)[0]


def _result(text, sample, answer, mask, multi_object) -> SampleResult:
    result = SampleResult(id=str(sample.id), query=sample.query, completion=text, group=sample_group(sample))
    objects = answer_objects(answer, multi_object)
    if answer is None:
        result.failure = "unparseable"
    elif not objects:
        result.failure = "no box or points"
    first = objects[0] if objects else None
    if first is not None and first.box is not None:
        result.box = [float(v) for v in sample.to_original(first.box)]
        if sample.box is not None:
            result.box_iou = box_iou(result.box, sample.box)
    if first is not None and first.points:
        result.points = sample.to_original(first.points).tolist()
    result.mask = mask
    if sample.mask is None:
        return result
    inter, union = intersection_union(result.mask, sample.mask)  # None: an empty prediction
    result.intersection, result.union, result.iou = int(inter), int(union), sample_iou(inter, union)
    return result


class Evaluator(nn.Module):
    """Accumulates segmentation metrics (exact across processes) and the per-sample records.

    Metrics: gIoU / cIoU overall and per group (`groups`, e.g. ReasonSeg short/long), box accuracy over
    samples with a GT box, parse-failure rate, and the mean of each reward on the greedy answers.
    """

    def __init__(
        self,
        reward_names: list[str],
        groups: tuple[str, ...] = ("short", "long"),
        multi_object: bool = False,
    ) -> None:
        super().__init__()
        self.segmentation = SegmentationIoU()
        self.grouped = GroupedSegmentationIoU(groups=groups)
        self.box_accuracy = BoxAccuracy()
        self.parse_failures = ParseFailureRate()
        self.reward_means = nn.ModuleDict({name: ExactMean() for name in reward_names})
        self.groups = tuple(groups)
        self.multi_object = multi_object
        self.records: list[SampleResult] = []
        # Samples left out because they could not be read (data.on_error: skip); a sum over processes.
        self.register_buffer("unreadable", torch.zeros((), dtype=torch.long), persistent=False)

    def count_unreadable(self, batch) -> None:
        """Counts the samples of a batch that could not be read (`SampleBatch.failures`), so the metrics
        report how many were left out instead of dropping them silently."""
        self.unreadable += len(getattr(batch, "failures", ()))

    def update(self, texts: list[str], samples: list[SegSample], segmenter, rewards=()) -> list[SampleResult]:
        results = evaluate_samples(texts, samples, segmenter, self.multi_object)
        with_mask = [(r, s) for r, s in zip(results, samples) if s.mask is not None]
        if with_mask:
            if segmenter is None:
                raise ValueError("evaluation needs SAM to turn answers into masks: set model.sam_checkpoint")
            self.segmentation.update([r.mask for r, _ in with_mask], [s.mask for _, s in with_mask])
            grouped = [(r, s) for r, s in with_mask if r.group in self.groups]
            if grouped:
                self.grouped.update(
                    [r.mask for r, _ in grouped], [s.mask for _, s in grouped], [r.group for r, _ in grouped]
                )
        with_box = [(r, s) for r, s in zip(results, samples) if s.box is not None]
        if with_box:
            self.box_accuracy.update([r.box for r, _ in with_box], [s.box for _, s in with_box])
        # A failure is an answer that gives SAM nothing: unparseable, or neither a box nor points.
        self.parse_failures.update([None if r.failure is not None else r for r in results])
        for reward in rewards:
            if reward.name in self.reward_means:
                self.reward_means[reward.name].update(reward(texts, samples))
        self.records.extend(results)
        return results

    def compute(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if int(_synced_total(self.segmentation.count)) > 0:
            out.update({k: float(v) for k, v in self.segmentation.compute().items()})
        if int(_synced_total(self.grouped.count)) > 0:
            for key, value in self.grouped.compute().items():
                if "/" in key and not np.isnan(float(value)):
                    out[key] = float(value)
        if int(_synced_total(self.box_accuracy.total)) > 0:
            out["box_accuracy"] = float(self.box_accuracy.compute())
        out["parse_failure_rate"] = float(self.parse_failures.compute())
        unreadable = int(_synced_total(self.unreadable))
        if unreadable:
            out["unreadable_samples"] = float(unreadable)
        for name, metric in self.reward_means.items():
            if metric.update_called:
                out[f"reward/{name}"] = float(metric.compute())
        return out

    def gather_records(self) -> list[SampleResult]:
        """Every process's records, in rank order (on every process)."""
        if not (dist.is_available() and dist.is_initialized()):
            return list(self.records)
        rows = [r.to_json() for r in self.records]
        gathered: list[list[dict]] = [None] * dist.get_world_size()  # type: ignore[list-item]
        dist.all_gather_object(gathered, rows)
        return [SampleResult(**row) for part in gathered for row in part]

    def write_predictions(self, path: str | Path, records: list[SampleResult]) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as f:
            for record in records:
                f.write(json.dumps(record.to_json()) + "\n")
        return path

    def reset(self) -> None:
        self.segmentation.reset()
        self.grouped.reset()
        self.box_accuracy.reset()
        self.parse_failures.reset()
        for metric in self.reward_means.values():
            metric.reset()
        self.unreadable.zero_()
        self.records = []


def _synced_total(count: torch.Tensor) -> torch.Tensor:
    """Samples counted on all processes (so every process takes the same branch before a collective)."""
    total = count.sum().clone()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total)
    return total


def summary_table(results: dict[str, float], n: int, settings: dict[str, Any] | None = None) -> str:
    """A plain-text table of the evaluation results (fractions shown as percentages), then the settings
    they were produced with (decoding, prompt, mask selection), so a number is never read without them."""
    lines = [f"{'metric':<28}{'value':>10}", "-" * 38, f"{'samples':<28}{n:>10d}"]
    for key, value in results.items():
        is_count = key.endswith("/count") or key == "unreadable_samples"
        shown = f"{value:10.0f}" if is_count else f"{100 * value:9.2f}%"
        if key.startswith("reward/"):
            shown = f"{value:10.4f}"
        lines.append(f"{key:<28}{shown}")
    if settings:
        lines += ["-" * 38, *(f"{key:<28}{value!s:>10}" for key, value in settings.items())]
    return "\n".join(lines)
