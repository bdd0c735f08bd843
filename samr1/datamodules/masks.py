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

from samr1.datamodules.checks import check_rle
from samr1.geometry import component_boxes, inscribed_circle_points, tight_box  # noqa: F401 (re-exported)
from samr1.sample import SegSample

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
    """Boolean H x W mask of a COCO RLE dict (`counts` as a string or bytes, or an uncompressed list).
    ValueError for one whose runs do not cover exactly H x W pixels: pycocotools would decode it to junk."""
    check_rle(rle)
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


def annotated_sample(
    id: str,
    query: str,
    mask: np.ndarray,
    image,
    image_path: Any,
    meta: dict[str, Any],
    box: tuple[float, float, float, float] | None = None,
    points: list[tuple[float, float]] | None = None,
) -> SegSample:
    """A dataset's sample: a `box` or `points` the annotation does not give are the mask's tight box and
    the centres of its two largest inscribed circles (Seg-Zero's GT points), the rule of every dataset."""
    target = mask == 1
    return SegSample(
        id=id,
        query=query,
        mask=mask,
        image=image,
        image_path=None if image_path is None else str(image_path),
        box=box if box is not None else tight_box(target),
        points=points if points is not None else inscribed_circle_points(target),
        meta=meta,
    )
