"""Writes what `samr1 predict` answers: per sample a mask PNG, an overlay PNG, the completion, a JSONL line.

For each `SampleResult` of `GRPOModule.predict_step` (box and points in original pixels), in `output_dir`:

    <id>_mask.png     SAM's mask, 0/255 (only when SAM is configured; all 0 when the answer has no box or points)
    <id>_overlay.png  the image with the mask (magenta), box (red) and points (yellow); GT in green if known
    <id>.txt          the full completion, reasoning included
    predictions.jsonl one line per sample: the result, the image and the names of the files above

`predictions.jsonl` is emptied when prediction starts and written to after every batch.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info
from PIL import Image

from samr1.answer import Answer
from samr1.callbacks.overlays import draw_prediction
from samr1.modules.evaluation import SampleResult, as_answer_segmenter
from samr1.sample import SegSample

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def file_stem(sample_id: str) -> str:
    """A sample id as a file name: anything but letters, digits, '.', '_' and '-' becomes '_'."""
    return _UNSAFE.sub("_", str(sample_id)).strip(".") or "sample"


def result_mask(result: SampleResult, sample: SegSample, image: np.ndarray, segmenter) -> np.ndarray | None:
    """The result's mask; without one, SAM's mask for its box and points (original pixels), if SAM is there.

    `segmenter`: the run's `AnswerSegmenter` (`GRPOModule.answer_segmenter`: the same path and mask selection
    as the rewards and evaluation) or a bare segmenter (then the default "best" selection)."""
    if result.mask is not None:
        return np.asarray(result.mask, dtype=bool)
    segment = as_answer_segmenter(segmenter)
    if segment is None:
        return None
    obj = Answer(
        box=tuple(result.box) if result.box is not None else None,
        points=[tuple(p) for p in result.points or []],
    )
    original = SegSample(id=sample.id, query=sample.query, image_path=sample.image_path, image=sample.image)
    (mask,), _ = segment([original], [obj])  # no transform: the coordinates are original pixels
    return np.zeros(image.shape[:2], dtype=bool) if mask is None else mask


class PredictionWriter(BasePredictionWriter):
    """Writes masks, overlays, completions and `predictions.jsonl` to `output_dir` after every batch."""

    def __init__(self, output_dir: str = "predictions") -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)

    @property
    def jsonl_name(self) -> str:
        return "predictions.jsonl"

    def _jsonl(self, trainer) -> Path:
        name = self.jsonl_name if trainer.world_size == 1 else f"predictions_rank{trainer.global_rank}.jsonl"
        return self.output_dir / name

    def on_predict_start(self, trainer, pl_module) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl(trainer).write_text("")

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0
    ) -> None:
        segmenter = getattr(pl_module, "answer_segmenter", None) or getattr(pl_module, "segmenter", None)
        lines = []
        for result, sample in zip(prediction, batch):
            lines.append(self.write_result(result, sample, segmenter))
            rank_zero_info(
                f"{result.id}: {result.query!r} -> box {result.box} points {result.points}"
                f"{f' ({result.failure})' if result.failure else ''}; "
                f"wrote {self.output_dir / lines[-1]['overlay_path']}"
            )
        with self._jsonl(trainer).open("a") as f:
            for line in lines:
                f.write(json.dumps(line) + "\n")

    def write_result(self, result: SampleResult, sample: SegSample, segmenter=None) -> dict:
        """Writes one sample's files; returns its JSONL row (file names relative to `output_dir`)."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        stem = file_stem(result.id)
        image = sample.load_image()
        mask = result_mask(result, sample, np.asarray(image), segmenter)
        row = result.to_json()
        row["image"] = sample.image_path
        row["mask_path"] = None
        if mask is not None:
            row["mask_path"] = f"{stem}_mask.png"
            Image.fromarray(mask.astype(np.uint8) * 255, "L").save(self.output_dir / row["mask_path"])
        row["overlay_path"] = f"{stem}_overlay.png"
        overlay = draw_prediction(
            image,
            gt_mask=sample.mask,
            pred_mask=mask,
            box=result.box,
            points=result.points,
            gt_box=sample.box,
        )
        overlay.save(self.output_dir / row["overlay_path"])
        row["completion_path"] = f"{stem}.txt"
        (self.output_dir / row["completion_path"]).write_text(result.completion)
        return row
