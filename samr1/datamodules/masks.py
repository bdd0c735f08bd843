"""Mask helpers shared by the datasets: LISA-exact polygon rasterisation, COCO RLE, tight boxes, GT points.

Masks are uint8 H x W with 0 background, 1 target, 255 ignored (LISA's convention). Boxes are (x1, y1, x2, y2)
with pixel-edge coordinates, like COCO's xywh: a mask whose target pixels span columns 3..5 has x1 = 3, x2 = 6.
Points are (x, y) pixel indices (column, row) of pixel centres, as SAM expects (its prompt encoder adds the
half pixel itself).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

Polygon = Sequence[Sequence[float]]  # [[x, y], ...] in original pixels

# OpenCV 4.11 changed fillPoly's edge rule (opencv/opencv#26187): from then on polylines + fillPoly paint
# fewer pixels along slanted edges than the OpenCV 4.8 LISA ran (4.8 to 4.10 agree pixel for pixel). Masks
# rasterised from polygons (ReasonSeg, JSONL "polygons") are LISA's only with OpenCV < 4.11.
OPENCV_VERSION = tuple(int(v) for v in re.findall(r"\d+", cv2.__version__)[:2])
OPENCV_MATCHES_LISA = (4, 8) <= OPENCV_VERSION < (4, 11)


def polygon_array(points: Polygon) -> np.ndarray:
    """The polygon as OpenCV draws it: int32 [1, N, 2]; ValueError for anything but [[x, y], ...]."""
    # LISA passes np.array([points], dtype=np.int32): coordinates are truncated towards zero, not rounded.
    try:
        array = np.array([points], dtype=np.int32)
    except (TypeError, ValueError, OverflowError) as err:
        raise ValueError(f"a polygon must be a list of [x, y] numbers: {err}") from err
    if array.ndim != 3 or array.shape[2] != 2 or array.shape[1] == 0:
        raise ValueError(f"a polygon must be a non-empty list of [x, y] points, got shape {array.shape[1:]}")
    return array


def draw_polygon(canvas: np.ndarray, points: Polygon, value: int) -> np.ndarray:
    """Paints one polygon into `canvas` in place as LISA does: outline (thickness 1) then interior."""
    polygon = polygon_array(points)
    cv2.polylines(canvas, polygon, True, value, 1)
    cv2.fillPoly(canvas, polygon, value)
    return canvas


def polygon_area(points: Polygon, height: int, width: int) -> int:
    """Pixel count of the polygon drawn on a blank canvas: LISA's area for ordering polygons."""
    canvas = np.zeros((height, width), dtype=np.uint8)
    return int(draw_polygon(canvas, points, 1).sum())


def paint_polygons(polygons: Sequence[tuple[Polygon, int]], height: int, width: int) -> np.ndarray:
    """uint8 mask of `(points, value)` polygons painted in decreasing area order, so that a smaller polygon
    (an ignored hole, a part) overwrites the larger one it lies in. Ties keep LISA's order: it sorts with
    `np.argsort(areas)[::-1]`, which this reproduces call for call."""
    if polygons and not OPENCV_MATCHES_LISA:
        warnings.warn(
            f"OpenCV {cv2.__version__} rasterises polygons differently from the OpenCV 4.8 LISA used: ReasonSeg "
            "masks will differ from the reference ones along polygon edges; install opencv-python-headless<4.11",
            RuntimeWarning,
            stacklevel=2,
        )
    areas = [polygon_area(points, height, width) for points, _ in polygons]
    mask = np.zeros((height, width), dtype=np.uint8)
    for index in np.argsort(areas)[::-1]:
        points, value = polygons[int(index)]
        draw_polygon(mask, points, value)
    return mask


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """Boolean H x W mask of a COCO RLE dict (`counts` as a string or bytes, or an uncompressed list)."""
    height, width = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed RLE (COCO's iscrowd annotations)
        compressed = mask_utils.frPyObjects(rle, height, width)
    else:
        compressed = {
            "size": [height, width],
            "counts": counts.encode() if isinstance(counts, str) else counts,
        }
    return mask_utils.decode(compressed).astype(bool)


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO RLE of a boolean mask, JSON-ready: {"size": [h, w], "counts": str}."""
    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_coco_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Boolean H x W union of a COCO `segmentation`: a list of flat polygons [x1, y1, x2, y2, ...], an RLE dict
    (compressed or not) or a list of RLE dicts. Decoded with pycocotools, as the refer toolkit and LISA do."""
    if isinstance(segmentation, dict):
        mask = decode_rle(segmentation)
    elif isinstance(segmentation, list) and segmentation and all(isinstance(p, list) for p in segmentation):
        rles = mask_utils.frPyObjects(segmentation, height, width)
        mask = mask_utils.decode(mask_utils.merge(rles)).astype(bool)
    elif isinstance(segmentation, list) and segmentation and all(isinstance(r, dict) for r in segmentation):
        mask = np.logical_or.reduce([decode_rle(r) for r in segmentation])
    else:
        raise ValueError(f"unsupported segmentation: {type(segmentation).__name__} {str(segmentation)[:80]}")
    if mask.shape != (height, width):
        raise ValueError(f"segmentation size {mask.shape} differs from the image's {(height, width)}")
    return mask


def tight_box(target: np.ndarray) -> tuple[float, float, float, float] | None:
    """Smallest pixel-edge box (x1, y1, x2, y2) around the True pixels; None for an empty mask."""
    rows = np.flatnonzero(np.any(target, axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(np.any(target, axis=0))
    return (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))


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
