"""Weights & Biases tables: what the policy wrote, drawn on the image, with its rewards.

`RolloutTableCallback` logs through the trainer's `WandbLogger` (and does nothing without one):

* `train/rollouts`, every `every_n_steps` rollout batches: one row per completion (the first `max_rows`),
  with the image overlay (GT mask, answer box and points, SAM's mask), the completion, the total reward and
  one column per reward. SAM's mask is the mask reward's (the run's one answer -> mask path); without a mask
  reward, the shown rows are segmented through that same path (`GRPOModule.answer_segmenter`) when SAM is
  configured.
* `val/predictions` and `val/metrics` after each validation: the greedy answers of the first `max_rows`
  samples drawn on their images with their IoU, and the `val/*` metrics as a table.

Lightning calls callbacks' `on_validation_epoch_end` before the module's, and the module logs `val/*` and
resets its evaluator's records there; so the records are collected batch by batch (`on_validation_batch_end`)
and everything is logged in `on_validation_end`, when `trainer.callback_metrics` holds the new `val/*` values.

`wandb` is imported only when a table is logged, so samr1 imports without it.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
from PIL import Image

from samr1.callbacks.overlays import draw_prediction, thumbnail
from samr1.modules.step import StepRecord
from samr1.sample import SegSample

ROLLOUT_KEY = "train/rollouts"
PREDICTIONS_KEY = "val/predictions"
METRICS_KEY = "val/metrics"


def find_wandb_logger(trainer: L.Trainer):
    """The trainer's `WandbLogger`, or None."""
    from lightning.pytorch.loggers.wandb import WandbLogger  # importable without wandb installed

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            return logger
    return None


def completion_overlay(
    sample: SegSample, answer, pred_mask: np.ndarray | None, max_side: int | None = 512
) -> Image.Image:
    """The sample's image with its GT mask and box, the parsed answer's box and points and SAM's mask."""
    box = points = None
    if answer is not None and answer.box is not None:
        box = sample.to_original(answer.box).tolist()
    if answer is not None and answer.points:
        points = sample.to_original(answer.points).tolist()
    image = draw_prediction(
        sample.load_image(),
        gt_mask=sample.mask,
        pred_mask=pred_mask,
        box=box,
        points=points,
        gt_box=sample.box,
    )
    return thumbnail(image, max_side)


def rollout_rows(
    record: StepRecord, step: int, max_rows: int, max_side: int | None = 512, segment: Any = None
) -> tuple[list[str], list[list]]:
    """(columns, rows) of a training step's record; the overlay cells are PIL images. `segment`: the run's
    `AnswerSegmenter`, used for the shown rows when no reward made masks (None: no SAM mask drawn)."""
    names = list(record.rewards)
    columns = ["step", "sample_id", "query", "overlay", "completion", "total_reward", *names]
    masks = record.masks
    if masks is None and segment is not None:
        masks, _ = segment(record.samples[:max_rows], record.answers[:max_rows])
    rows = []
    for i, (sample, text) in enumerate(zip(record.samples[:max_rows], record.rollouts.texts)):
        mask = masks[i] if masks is not None else None
        overlay = completion_overlay(sample, record.answers[i], mask, max_side)
        rewards = [float(record.rewards[name][i]) for name in names]
        rows.append(
            [step, str(sample.id), sample.query, overlay, text, float(record.total_reward[i]), *rewards]
        )
    return columns, rows


def prediction_row(step: int, dataloader_idx: int, sample: SegSample, record, max_side: int | None = 512):
    """One validation row: the greedy answer (`SampleResult`, original pixels) drawn on its image."""
    image = draw_prediction(
        sample.load_image(),
        gt_mask=sample.mask,
        pred_mask=record.mask,
        box=record.box,
        points=record.points,
        gt_box=sample.box,
    )
    overlay = thumbnail(image, max_side)
    return [
        step,
        dataloader_idx,
        record.id,
        record.query,
        overlay,
        record.completion,
        record.iou,
        record.failure,
    ]


PREDICTION_COLUMNS = ["step", "dataloader", "sample_id", "query", "overlay", "completion", "iou", "failure"]
METRIC_COLUMNS = ["step", "group", "metric", "value"]


def metric_rows(metrics: dict[str, Any], step: int, prefix: str = "val/") -> list[list]:
    """`prefix`-ed metrics as (step, group, metric, value); "val/short/giou" -> group "short", "giou"."""
    rows = []
    for key in sorted(metrics):
        if not key.startswith(prefix):
            continue
        group, _, name = key[len(prefix) :].rpartition("/")
        rows.append([step, group or "all", name, float(metrics[key])])
    return rows


def _wandb_cells(rows: list[list]) -> list[list]:
    import wandb

    return [[wandb.Image(cell) if isinstance(cell, Image.Image) else cell for cell in row] for row in rows]


class RolloutTableCallback(L.Callback):
    """Rollout and validation tables with image overlays in W&B (see the module docstring).

    Args:
        every_n_steps: rollout batches (training steps) between two rollout tables.
        max_rows: completions per rollout table and samples per validation table.
        max_image_side: overlays are scaled down to this longer side (None: original size).
        log_validation: also log the validation predictions and metrics tables.
    """

    def __init__(
        self,
        every_n_steps: int = 50,
        max_rows: int = 16,
        max_image_side: int | None = 512,
        log_validation: bool = True,
    ) -> None:
        if every_n_steps < 1 or max_rows < 1:
            raise ValueError("every_n_steps and max_rows must be positive")
        self.every_n_steps = every_n_steps
        self.max_rows = max_rows
        self.max_image_side = max_image_side
        self.log_validation = log_validation
        self._batches = 0
        self._val_rows: list[list] = []

    # ------------------------------------------------------------ training
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._batches += 1
        if self._batches % self.every_n_steps or not trainer.is_global_zero:
            return
        logger = find_wandb_logger(trainer)
        record = getattr(pl_module, "last_step", None)
        if logger is None or record is None:
            return
        segment = getattr(pl_module, "answer_segmenter", None)
        columns, rows = rollout_rows(record, trainer.global_step, self.max_rows, self.max_image_side, segment)
        logger.log_table(ROLLOUT_KEY, columns=columns, data=_wandb_cells(rows), step=trainer.global_step)

    # ------------------------------------------------------------ validation
    def _active(self, trainer) -> bool:
        return (
            self.log_validation
            and not trainer.sanity_checking
            and trainer.is_global_zero
            and find_wandb_logger(trainer) is not None
        )

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._val_rows = []

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if len(self._val_rows) >= self.max_rows or not self._active(trainer):
            return
        evaluator = getattr(pl_module, "evaluator", None)
        if evaluator is None or not batch:
            return
        records = evaluator.records[-len(batch) :]  # the evaluator appends one record per sample
        for sample, record in zip(batch, records):
            if len(self._val_rows) >= self.max_rows:
                break
            if record.id != str(sample.id):
                continue
            self._val_rows.append(
                prediction_row(trainer.global_step, dataloader_idx, sample, record, self.max_image_side)
            )

    def on_validation_end(self, trainer, pl_module) -> None:
        if not self._active(trainer):
            return
        logger = find_wandb_logger(trainer)
        step = trainer.global_step
        if self._val_rows:
            logger.log_table(
                PREDICTIONS_KEY, columns=PREDICTION_COLUMNS, data=_wandb_cells(self._val_rows), step=step
            )
        rows = metric_rows(trainer.callback_metrics, step)
        if rows:
            logger.log_table(METRICS_KEY, columns=METRIC_COLUMNS, data=rows, step=step)
        self._val_rows = []
