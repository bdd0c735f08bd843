"""Geometry shared by rewards, metrics, datamodules and callbacks: boxes, masks and the points inside them.

Boxes are (x1, y1, x2, y2) with pixel-edge coordinates, like COCO's xywh: a mask whose target pixels span
columns 3..5 has x1 = 3, x2 = 6. Points are (x, y) pixel indices (column, row) of pixel centres, as SAM
expects. Masks are uint8 H x W with 0 background, 1 target, 255 ignored (LISA's convention), or boolean.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch

BoxLike = Sequence[float]


# ---------------------------------------------------------------- boxes
def box_iou(a: BoxLike, b: BoxLike) -> float:
    """IoU of two (x1, y1, x2, y2) boxes with continuous area ((x2 - x1) * (y2 - y1)); 0 if the union is empty."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(iw, 0.0) * max(ih, 0.0)
    area_a = max(a[2] - a[0], 0.0) * max(a[3] - a[1], 0.0)
    area_b = max(b[2] - b[0], 0.0) * max(b[3] - b[1], 0.0)
    union = area_a + area_b - inter
    return float(inter / union) if union > 0 else 0.0


def box_l1(a: BoxLike, b: BoxLike) -> float:
    """Mean absolute difference of the four coordinates."""
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).mean())


def _as_boxes(boxes: Sequence[BoxLike] | np.ndarray) -> np.ndarray:
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4) if len(boxes) else np.zeros((0, 4))


def box_iou_matrix(pred: Sequence[BoxLike] | np.ndarray, gt: Sequence[BoxLike] | np.ndarray) -> np.ndarray:
    """[P, G] IoU of every predicted with every GT box (continuous areas; 0 where the union is empty)."""
    a, b = _as_boxes(pred)[:, None, :], _as_boxes(gt)[None, :, :]
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0.0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0.0, None)
    inter = iw * ih
    area_a = np.clip(a[..., 2] - a[..., 0], 0.0, None) * np.clip(a[..., 3] - a[..., 1], 0.0, None)
    area_b = np.clip(b[..., 2] - b[..., 0], 0.0, None) * np.clip(b[..., 3] - b[..., 1], 0.0, None)
    union = area_a + area_b - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def box_l1_matrix(pred: Sequence[BoxLike] | np.ndarray, gt: Sequence[BoxLike] | np.ndarray) -> np.ndarray:
    """[P, G] mean absolute difference of the four coordinates of every predicted and GT box."""
    return np.abs(_as_boxes(pred)[:, None, :] - _as_boxes(gt)[None, :, :]).mean(axis=-1)


# ---------------------------------------------------------------- masks (LISA's IoU)
def as_numpy(array: Any) -> np.ndarray:
    """A numpy view of a tensor (detached, on the CPU) or array-like."""
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def intersection_union(pred: Any, target: Any) -> tuple[int, int]:
    """(intersection, union) pixel counts of a prediction with a target mask.

    `pred`: H x W (numpy or tensor; non-zero = predicted) or None (an unparseable answer: empty). `target`:
    uint8 H x W, 0 background, 1 target, 255 ignored; ignored pixels count in neither number.
    """
    target = as_numpy(target)
    if target.ndim != 2:
        raise ValueError(f"target must be H x W, got shape {target.shape}")
    if np.any((target != 0) & (target != 1) & (target != 255)):
        raise ValueError(f"target values must be 0, 1 or 255, got {np.unique(target)[:8].tolist()}")
    positive = target == 1
    if pred is None:
        return 0, int(np.count_nonzero(positive))
    pred = as_numpy(pred).astype(bool, copy=False)
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from target shape {target.shape}")
    intersection = int(np.count_nonzero(pred & positive))
    union = int(np.count_nonzero((pred & (target != 255)) | positive))
    return intersection, union


def sample_iou(intersection: int, union: int) -> float:
    """Per-sample IoU: I / U, and 1.0 when the union is empty (empty prediction, empty target)."""
    return 1.0 if union == 0 else intersection / union


def mask_iou(pred: Any, target: Any) -> float:
    """LISA's IoU of a prediction (None: empty) with a target mask: the one rule of rewards and metrics."""
    return sample_iou(*intersection_union(pred, target))


# ---------------------------------------------------------------- boxes and points from masks
def tight_box(target: np.ndarray) -> tuple[float, float, float, float] | None:
    """Smallest pixel-edge box (x1, y1, x2, y2) around the True pixels; None for an empty mask."""
    rows = np.flatnonzero(np.any(target, axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(np.any(target, axis=0))
    return (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))


def component_boxes(target: np.ndarray, min_area: int = 1) -> list[tuple[float, float, float, float]]:
    """Tight pixel-edge boxes (x1, y1, x2, y2) of the 8-connected components of the True pixels with at least
    `min_area` pixels, sorted by (y1, x1, y2, x2). An empty mask gives []."""
    binary = np.ascontiguousarray(np.asarray(target, dtype=bool), dtype=np.uint8)
    if binary.ndim != 2:
        raise ValueError(f"expected an H x W mask, got shape {binary.shape}")
    count, _, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    boxes = []
    for label in range(1, count):  # label 0 is the background
        x, y, w, h, area = (int(v) for v in stats[label])
        if area >= min_area:
            boxes.append((float(x), float(y), float(x + w), float(y + h)))
    return sorted(boxes, key=lambda b: (b[1], b[0], b[3], b[2]))


def _distance_to_background(target: np.ndarray) -> np.ndarray:
    # A zero border makes the image edge a boundary: a circle must not extend past the image.
    padded = np.pad(target.astype(np.uint8), 1)
    return cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]


def inscribed_circle_points(target: np.ndarray, count: int = 2) -> list[tuple[float, float]] | None:
    """Centres (x, y) of the `count` largest non-overlapping inscribed circles of the True pixels (Seg-Zero's
    GT points). Greedy: the first centre is the maximum of the exact Euclidean distance transform (distance to
    the nearest background pixel or image edge; its value is the radius); that circle's disc (pixels closer to
    the centre than the radius) is removed from the mask and the distance transform recomputed for the next.
    Ties go to the first pixel in row-major order. When nothing is left (a mask smaller than one disc), the
    last centre is repeated so callers always get `count` points. None for an empty mask."""
    remaining = np.asarray(target, dtype=bool).copy()
    if not remaining.any():
        return None
    rows, cols = np.indices(remaining.shape)
    points: list[tuple[float, float]] = []
    for _ in range(count):
        if not remaining.any():
            points.append(points[-1])
            continue
        distance = _distance_to_background(remaining)
        row, col = np.unravel_index(int(np.argmax(distance)), distance.shape)
        points.append((float(col), float(row)))
        radius = float(distance[row, col])
        remaining &= (rows - row) ** 2 + (cols - col) ** 2 >= radius**2
    return points
