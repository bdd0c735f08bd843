"""The demo's report without wandb: a before/after table, training curves and test overlays, drawn with PIL.

`samr1 report RUN_DIR --config CONFIG` reads what the demo's runs wrote under RUN_DIR:

    baseline.metrics.json / baseline.jsonl                   `samr1 test` of the starting policy (before GRPO)
    test_predictions.metrics.json / test_predictions.jsonl   `samr1 test` of the last checkpoint (after GRPO)
    csv/version_*/metrics.csv                                 the CSVLogger's per-step training log

and prints one table of the metrics side by side, writes `curves.png` (per optimiser step: mean total reward,
each reward, SAM mask IoU, KL, completion length) and `overlays.png` (a few test images, before | after: GT
mask green, SAM's mask magenta, the answer's box red and points yellow; the sample's IoU under each).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

BEFORE, AFTER = "baseline", "test_predictions"
BACKGROUND, AXIS, GRID, TEXT = (255, 255, 255), (60, 60, 60), (225, 225, 225), (20, 20, 20)
LINE_COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14))
SUMMARY_KEYS = ("giou", "ciou", "box_accuracy", "parse_failure_rate")


# ---------------------------------------------------------------- the table
def load_metrics(path: str | Path) -> dict[str, float]:
    """A metrics JSON written by `samr1 test` (only its numbers)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"metrics file not found: {path} (run `samr1 test` with predictions_path)")
    data = json.loads(path.read_text())
    return {k: float(v) for k, v in data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def comparison_table(before: dict[str, float], after: dict[str, float]) -> str:
    """Metrics before and after GRPO side by side: the summary metrics first (as %), then each reward."""
    keys = [k for k in SUMMARY_KEYS if k in before or k in after]
    keys += sorted(k for k in {*before, *after} if k.startswith("reward/"))
    lines = [f"{'metric':<26}{'before':>10}{'after':>10}{'change':>10}", "-" * 56]
    for key in keys:
        b, a = before.get(key, math.nan), after.get(key, math.nan)
        scale, unit = (1.0, "") if key.startswith("reward/") else (100.0, "%")
        cells = [f"{scale * v:9.2f}{unit}" if unit else f"{v:10.4f}" for v in (b, a)]
        change = scale * (a - b)
        cells.append(f"{change:+9.2f}{unit}" if unit else f"{change:+10.4f}")
        lines.append(f"{key:<26}{''.join(cells)}")
    lines.append(
        f"{'samples':<26}{before.get('samples', math.nan):>10.0f}{after.get('samples', math.nan):>10.0f}"
    )
    return "\n".join(lines)


# ---------------------------------------------------------------- training curves
def metrics_csv(run_dir: str | Path) -> Path:
    """The newest CSVLogger file under RUN_DIR/csv that holds training rows (`samr1 test` runs before and
    after the fit write their own versions, with evaluation columns only)."""
    files = sorted(
        Path(run_dir).glob("csv/version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[-1])
    )
    trained = [p for p in files if "train/reward/mean" in p.open().readline().split(",")]
    if not trained:
        raise FileNotFoundError(
            f"no CSV training log (a train/reward/mean column) under {Path(run_dir) / 'csv'}: configure a "
            "CSVLogger for the fit"
        )
    return trained[-1]


def read_series(path: str | Path) -> dict[str, tuple[list[float], list[float]]]:
    """Every logged column as (optimiser steps, values), skipping the rows where it is empty."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            step = row.get("step")
            if not step:
                continue
            for key, value in row.items():
                if key in ("step", "epoch") or value in ("", None):
                    continue
                xs, ys = series.setdefault(key, ([], []))
                xs.append(float(step))
                ys.append(float(value))
    return series


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step + 1e-9) + 1)]


def _label(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 100 or value == int(value) else f"{value:.3g}"


def line_plot(
    title: str,
    lines: Sequence[tuple[str, Sequence[float], Sequence[float]]],
    size: tuple[int, int] = (420, 260),
) -> Image.Image:
    """A line chart of (name, xs, ys) lines with axes, ticks, a title and a legend when there are several."""
    image = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    left, right, top, bottom = 48, size[0] - 12, 24, size[1] - 28
    draw.text((left, 6), title, fill=TEXT, font=font)
    points = [(x, y) for _, xs, ys in lines for x, y in zip(xs, ys) if math.isfinite(y)]
    if not points:
        draw.text((left + 10, (top + bottom) // 2), "not logged", fill=AXIS, font=font)
        return image
    x_lo, x_hi = min(p[0] for p in points), max(p[0] for p in points)
    y_lo, y_hi = min(p[1] for p in points), max(p[1] for p in points)
    if x_hi == x_lo:
        x_hi = x_lo + 1
    pad = (y_hi - y_lo) * 0.08 or max(abs(y_hi) * 0.1, 1e-3)
    y_lo, y_hi = y_lo - pad, y_hi + pad

    def to_px(x: float, y: float) -> tuple[float, float]:
        return (
            left + (x - x_lo) / (x_hi - x_lo) * (right - left),
            bottom - (y - y_lo) / (y_hi - y_lo) * (bottom - top),
        )

    for y in _nice_ticks(y_lo, y_hi):
        _, py = to_px(x_lo, y)
        draw.line([(left, py), (right, py)], fill=GRID)
        draw.text((4, py - 6), _label(y), fill=TEXT, font=font)
    for x in _nice_ticks(x_lo, x_hi):
        px, _ = to_px(x, y_lo)
        draw.line([(px, bottom), (px, bottom + 4)], fill=AXIS)
        draw.text((px - 8, bottom + 6), _label(x), fill=TEXT, font=font)
    draw.rectangle([left, top, right, bottom], outline=AXIS)
    for i, (name, xs, ys) in enumerate(lines):
        colour = LINE_COLOURS[i % len(LINE_COLOURS)]
        coords = [to_px(x, y) for x, y in zip(xs, ys) if math.isfinite(y)]
        if len(coords) > 1:
            draw.line(coords, fill=colour, width=2)
        elif coords:
            x, y = coords[0]
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
        if len(lines) > 1:
            draw.text((left + 6 + 110 * i, top + 4), name, fill=colour, font=font)
    draw.text((right - 80, size[1] - 14), "optimiser step", fill=AXIS, font=font)
    return image


def curve_panels(series: dict[str, tuple[list[float], list[float]]]) -> list[Image.Image]:
    """The demo's panels from the training log: total reward, each reward, mask IoU, KL, completion length."""

    def get(key: str) -> tuple[list[float], list[float]]:
        return series.get(f"train/{key}", ([], []))

    logged = {key[len("train/reward/") :] for key in series if key.startswith("train/reward/")}
    # A reward's details are logged as "<name>_<detail>" (mask_iou_iou, mask_iou_sam_score, ..._std): a key
    # is a reward of its own unless it starts with another logged reward's name and "_".
    reward_names = sorted(
        name
        for name in logged - {"mean", "std", "flat_group_frac"}
        if not any(name.startswith(other + "_") for other in logged if other != name)
    )
    panels = [line_plot("mean total reward", [("total", *get("reward/mean"))])]
    panels += [line_plot(f"reward: {name}", [(name, *get(f"reward/{name}"))]) for name in reward_names]
    panels.append(line_plot("SAM mask IoU of the samples", [("IoU", *get("reward/mask_iou_iou"))]))
    panels.append(line_plot("KL to the reference (k3)", [("kl", *get("kl"))]))
    panels.append(line_plot("completion length (tokens)", [("length", *get("completion/length"))]))
    return panels


def grid(images: Sequence[Image.Image], columns: int, gap: int = 6) -> Image.Image:
    """Images of one size laid out row by row."""
    width, height = images[0].size
    rows = math.ceil(len(images) / columns)
    out = Image.new(
        "RGB", (columns * width + (columns - 1) * gap, rows * height + (rows - 1) * gap), BACKGROUND
    )
    for i, im in enumerate(images):
        out.paste(im, ((i % columns) * (width + gap), (i // columns) * (height + gap)))
    return out


# ---------------------------------------------------------------- overlays
def read_predictions(path: str | Path) -> dict[str, dict]:
    """Per-sample records of `samr1 test` (JSONL), by sample id."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictions file not found: {path}")
    return {row["id"]: row for row in map(json.loads, path.read_text().splitlines()) if row}


def overlay_tile(sample, record: dict, segmenter, scale: int, caption: str) -> Image.Image:
    """One answer drawn on its image (enlarged `scale` times), with a caption line underneath."""
    from samr1.callbacks.overlays import draw_prediction
    from samr1.callbacks.prediction_writer import result_mask
    from samr1.modules.evaluation import SampleResult

    image = sample.load_image()
    fields = {k: record.get(k) for k in ("id", "query", "completion", "box", "points")}
    mask = result_mask(SampleResult(**fields), sample, np.asarray(image), segmenter)
    big = (image.width * scale, image.height * scale)
    drawn = draw_prediction(
        image.resize(big, Image.Resampling.NEAREST),
        gt_mask=np.asarray(Image.fromarray(sample.mask).resize(big, Image.Resampling.NEAREST)),
        pred_mask=None
        if mask is None
        else np.asarray(Image.fromarray(mask).resize(big, Image.Resampling.NEAREST)),
        box=None if record.get("box") is None else [v * scale for v in record["box"]],
        points=[[v * scale for v in p] for p in record.get("points") or []],
    )
    tile = Image.new("RGB", (drawn.width, drawn.height + 16), BACKGROUND)
    tile.paste(drawn, (0, 0))
    ImageDraw.Draw(tile).text((2, drawn.height + 2), caption, fill=TEXT, font=ImageFont.load_default())
    return tile


def overlay_grid(samples, before: dict[str, dict], after: dict[str, dict], segmenter, scale: int = 2):
    """Per sample a row: the query, then before | after GRPO."""
    font = ImageFont.load_default()
    rows = []
    for sample in samples:
        tiles = []
        for label, records in (("before", before), ("after", after)):
            record = records.get(str(sample.id), {})
            iou = record.get("iou")
            caption = f"{label}: IoU {iou:.2f}" if iou is not None else f"{label}: no answer"
            tiles.append(overlay_tile(sample, record, segmenter, scale, caption))
        row = grid(tiles, columns=2)
        labelled = Image.new("RGB", (row.width, row.height + 14), BACKGROUND)
        ImageDraw.Draw(labelled).text((2, 1), sample.query, fill=TEXT, font=font)
        labelled.paste(row, (0, 14))
        rows.append(labelled)
    return grid(rows, columns=min(3, len(rows)), gap=12)


# ---------------------------------------------------------------- the command
def _config_parts(config: str | Path) -> tuple[object, object]:
    """The test dataset and the SAM of a demo-style YAML config (data class_path/init_args, model SAM keys)."""
    import importlib

    import yaml

    from samr1.sam import build_sam

    cfg = yaml.safe_load(Path(config).read_text())
    data_cfg, model_cfg = cfg["data"], cfg["model"]
    module_name, _, class_name = data_cfg["class_path"].rpartition(".")
    data = getattr(importlib.import_module(module_name), class_name)(**data_cfg.get("init_args", {}))
    segmenter = build_sam(
        backend=model_cfg.get("sam_backend", "segment_anything"),
        model_type=model_cfg.get("sam_model_type", "vit_h"),
        checkpoint=model_cfg["sam_checkpoint"],
    )
    return data.build_dataset(data.test_split), segmenter


def write_report(run_dir: str | Path, config: str | Path, num_overlays: int = 6) -> str:
    """Print-ready table; writes RUN_DIR/curves.png and RUN_DIR/overlays.png."""
    run = Path(run_dir)
    before = load_metrics(run / f"{BEFORE}.metrics.json")
    after = load_metrics(run / f"{AFTER}.metrics.json")
    panels = curve_panels(read_series(metrics_csv(run)))
    grid(panels, columns=3).save(run / "curves.png")
    dataset, segmenter = _config_parts(config)
    samples = [dataset[i] for i in range(min(num_overlays, len(dataset)))]
    before_rows, after_rows = (
        read_predictions(run / f"{BEFORE}.jsonl"),
        read_predictions(run / f"{AFTER}.jsonl"),
    )
    overlay_grid(samples, before_rows, after_rows, segmenter).save(run / "overlays.png")
    return (
        f"test split, before GRPO (the warm-up policy) and after ({AFTER}):\n"
        f"{comparison_table(before, after)}\n"
        f"wrote {run / 'curves.png'} and {run / 'overlays.png'}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="samr1 report",
        description="Before/after table, training curves (curves.png) and test overlays (overlays.png) of a run.",
    )
    parser.add_argument("run_dir", help="the run directory (e.g. runs/demo)")
    parser.add_argument("--config", required=True, help="the run's YAML config (test data and SAM)")
    parser.add_argument("--overlays", type=int, default=6, help="test images in overlays.png")
    args = parser.parse_args(argv)
    print(write_report(args.run_dir, args.config, args.overlays))
