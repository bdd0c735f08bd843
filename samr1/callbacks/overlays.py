"""Drawing a prediction on its image: GT mask (green tint), SAM mask (magenta tint), boxes and points.

Every coordinate is in the image's own (original) pixels. Masks are boolean H x W arrays, or LISA-style uint8
(1 target, 0 background, 255 ignored: only the 1s are drawn). Each function returns a new RGB image.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

GT_MASK_COLOR = (0, 255, 0)
PRED_MASK_COLOR = (255, 0, 255)
PRED_BOX_COLOR = (255, 48, 48)
GT_BOX_COLOR = (0, 255, 0)
POINT_COLOR = (255, 255, 0)
POINT_OUTLINE = (0, 0, 0)
ALPHA = 0.45


def _rgb(image: Image.Image) -> Image.Image:
    return image.convert("RGB") if image.mode != "RGB" else image.copy()


def mask_pixels(mask: np.ndarray) -> np.ndarray:
    """The pixels a mask marks: a boolean array as it is, any other dtype where it equals 1."""
    mask = np.asarray(mask)
    return mask if mask.dtype == bool else mask == 1


def line_width(image: Image.Image) -> int:
    """Outline width that stays visible on large images: 1 px up to 300 px, then 1 px per 300 px."""
    return max(1, round(max(image.size) / 300))


def tint(image: Image.Image, mask: np.ndarray, color: Sequence[int], alpha: float = ALPHA) -> Image.Image:
    """Blend `color` into the masked pixels: round((1 - alpha) * pixel + alpha * color)."""
    out = np.asarray(_rgb(image)).astype(np.float64)
    pixels = mask_pixels(mask)
    if pixels.shape != out.shape[:2]:
        raise ValueError(f"mask shape {pixels.shape} differs from image size {out.shape[:2]} (H x W)")
    out[pixels] = (1.0 - alpha) * out[pixels] + alpha * np.asarray(color, dtype=np.float64)
    return Image.fromarray(np.rint(out).astype(np.uint8), "RGB")


def draw_box(
    image: Image.Image,
    box: Sequence[float],
    color: Sequence[int] = PRED_BOX_COLOR,
    width: int | None = None,
    dash: int = 0,
) -> Image.Image:
    """Outline (x1, y1, x2, y2), corners rounded to pixels; `dash` > 0 draws dashes of that length."""
    out = _rgb(image)
    draw = ImageDraw.Draw(out)
    width = width or line_width(out)
    x1, y1, x2, y2 = (round(float(v)) for v in box)
    x1, x2 = sorted((x1, x2))
    y1, y2 = sorted((y1, y2))
    if dash <= 0:
        draw.rectangle([x1, y1, x2, y2], outline=tuple(color), width=width)
        return out
    for (ax, ay), (bx, by) in (
        ((x1, y1), (x2, y1)),
        ((x2, y1), (x2, y2)),
        ((x2, y2), (x1, y2)),
        ((x1, y2), (x1, y1)),
    ):
        length = max(abs(bx - ax), abs(by - ay))
        for start in range(0, length + 1, 2 * dash):
            end = min(start + dash - 1, length)
            p = (ax + (bx - ax) * start / max(length, 1), ay + (by - ay) * start / max(length, 1))
            q = (ax + (bx - ax) * end / max(length, 1), ay + (by - ay) * end / max(length, 1))
            draw.line([p, q], fill=tuple(color), width=width)
    return out


def draw_points(
    image: Image.Image,
    points: Sequence[Sequence[float]],
    color: Sequence[int] = POINT_COLOR,
    radius: int | None = None,
) -> Image.Image:
    """A filled dot (dark 1 px outline when the radius allows) at each (x, y)."""
    out = _rgb(image)
    draw = ImageDraw.Draw(out)
    radius = radius or max(2, round(max(out.size) / 100))
    for x, y in points:
        x, y = round(float(x)), round(float(y))
        draw.ellipse(
            [x - radius, y - radius, x + radius, y + radius], fill=tuple(color), outline=POINT_OUTLINE
        )
    return out


def draw_prediction(
    image: Image.Image,
    gt_mask: np.ndarray | None = None,
    pred_mask: np.ndarray | None = None,
    box: Sequence[float] | None = None,
    points: Sequence[Sequence[float]] | None = None,
    gt_box: Sequence[float] | None = None,
) -> Image.Image:
    """Everything known about one answer on its image: GT mask, SAM mask, GT box (dashed), box, points."""
    out = _rgb(image)
    if gt_mask is not None:
        out = tint(out, gt_mask, GT_MASK_COLOR)
    if pred_mask is not None:
        out = tint(out, pred_mask, PRED_MASK_COLOR)
    if gt_box is not None:
        out = draw_box(out, gt_box, GT_BOX_COLOR, dash=4)
    if box is not None:
        out = draw_box(out, box, PRED_BOX_COLOR)
    if points:
        out = draw_points(out, points)
    return out


def thumbnail(image: Image.Image, max_side: int | None) -> Image.Image:
    """`image` scaled down so its longer side is at most `max_side` (None: unchanged)."""
    if max_side is None or max(image.size) <= max_side:
        return image
    scale = max_side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BILINEAR)
