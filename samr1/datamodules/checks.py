"""Set-up checks of annotations: cheap enough to run on every sample before training, strict enough that what
passes decodes to what it says (docs/data.md, "What on_error covers").

Each check raises a ValueError saying what is wrong; the dataset adds the file, line and id.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from samr1.images import ImageInfo

# A box edge or a point may lie this many pixels outside the image (annotation rounding); further is an error.
OUTSIDE_SLACK = 2.0
MASK_PNG_MODES = ("L", "P", "1")


def rle_string_counts(counts: str) -> list[int]:
    """The run lengths of a COCO compressed RLE string, decoded as pycocotools' `rleFrString` does, but
    refusing what it would read past the end of or decode to negative runs: ValueError for a malformed one."""
    runs: list[int] = []
    position = 0
    while position < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(counts):
                raise ValueError(f"RLE counts {counts[:40]!r} end inside a run length")
            code = ord(counts[position]) - 48
            if not 0 <= code < 64:
                raise ValueError(
                    f"RLE counts {counts[:40]!r} hold {counts[position]!r}, not a COCO RLE character"
                )
            value |= (code & 0x1F) << (5 * shift)
            more = bool(code & 0x20)
            position += 1
            shift += 1
            if not more and code & 0x10:
                value |= -1 << (5 * shift)  # sign extension of the last 5-bit group
        if len(runs) > 2:
            value += runs[-2]  # runs after the second are stored as differences
        if value < 0:
            raise ValueError(f"RLE counts {counts[:40]!r} decode to a negative run ({value})")
        runs.append(value)
    return runs


def check_rle(rle: Any, height: int | None = None, width: int | None = None, what: str = "RLE") -> None:
    """A COCO RLE dict {"size": [h, w], "counts": str | bytes | [int, ...]} whose runs cover exactly h x w
    pixels (and, when given, whose size is height x width); `what` names it in the message."""
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError(f"{what} must be an object with 'size' and 'counts', got {str(rle)[:80]}")
    size = rle["size"]
    if not (isinstance(size, list | tuple) and len(size) == 2 and all(_is_int(v) and v >= 0 for v in size)):
        raise ValueError(f"{what} 'size' must be [height, width] integers, got {size!r}")
    h, w = int(size[0]), int(size[1])
    if height is not None and (h, w) != (height, width):
        raise ValueError(f"{what} size [{h}, {w}] differs from the image's [h, w] [{height}, {width}]")
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii", errors="replace")
    if isinstance(counts, str):
        runs = rle_string_counts(counts)
    elif isinstance(counts, list) and all(_is_int(v) and v >= 0 for v in counts):
        runs = [int(v) for v in counts]
    else:
        raise ValueError(
            f"{what} 'counts' must be a COCO compressed string or a list of non-negative integers"
        )
    if sum(runs) != h * w:
        raise ValueError(f"{what} runs cover {sum(runs)} pixels, its size {h} x {w} has {h * w}")


def check_coco_segmentation(segmentation: Any, height: int, width: int) -> None:
    """A COCO `segmentation`: flat polygons [[x1, y1, x2, y2, ...], ...] of finite numbers (at least three
    points each), an RLE dict or a list of RLE dicts, each of the image's size."""
    if isinstance(segmentation, dict):
        check_rle(segmentation, height, width)
    elif isinstance(segmentation, list) and segmentation and all(isinstance(r, dict) for r in segmentation):
        for rle in segmentation:
            check_rle(rle, height, width)
    elif isinstance(segmentation, list) and segmentation and all(isinstance(p, list) for p in segmentation):
        for polygon in segmentation:
            if len(polygon) < 6 or len(polygon) % 2 or not all(_is_finite(v) for v in polygon):
                raise ValueError(
                    f"a COCO polygon must be 3 or more finite x, y pairs, got {str(polygon)[:80]}"
                )
    else:
        raise ValueError(f"unsupported segmentation: {type(segmentation).__name__} {str(segmentation)[:80]}")


def check_box(value: Any, size: tuple[int, int]) -> tuple[float, float, float, float]:
    """[x1, y1, x2, y2] of finite numbers, x1 <= x2 and y1 <= y2, inside the (width, height) image give or
    take OUTSIDE_SLACK pixels; returned as floats."""
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 4:
        raise ValueError(f"'box' must be [x1, y1, x2, y2], got {value!r}")
    if not all(_is_finite(v) for v in value):
        raise ValueError(f"'box' must hold finite numbers, got {value!r}")
    x1, y1, x2, y2 = (float(v) for v in value)
    if x2 < x1 or y2 < y1:
        raise ValueError(f"'box' must be [x1, y1, x2, y2] with x1 <= x2, y1 <= y2, got {value!r}")
    _inside((x1, y1), size, "'box'", value)
    _inside((x2, y2), size, "'box'", value)
    return (x1, y1, x2, y2)


def check_points(value: Any, size: tuple[int, int]) -> list[tuple[float, float]]:
    """A non-empty list of [x, y] finite numbers inside the (width, height) image (give or take
    OUTSIDE_SLACK pixels); returned as float pairs."""
    if not isinstance(value, list) or not value:
        raise ValueError(f"'points' must be a non-empty list of [x, y], got {str(value)[:80]}")
    points = []
    for point in value:
        if not isinstance(point, list | tuple) or len(point) != 2 or not all(_is_finite(v) for v in point):
            raise ValueError(f"'points' must be [x, y] pairs of finite numbers, got {point!r}")
        xy = (float(point[0]), float(point[1]))
        _inside(xy, size, "'points'", point)
        points.append(xy)
    return points


def check_mask_png(info: ImageInfo, size: tuple[int, int], path: Any) -> None:
    """A mask PNG is single-channel (mode L, P or 1) and has the image's (width, height)."""
    if info.mode not in MASK_PNG_MODES:
        raise ValueError(f"mask PNG {path} must have one channel (mode L, P or 1), got mode {info.mode}")
    if info.size != size:
        raise ValueError(f"mask PNG {path} is {info.size}, the image {size}")


def _inside(xy: tuple[float, float], size: tuple[int, int], what: str, value: Any) -> None:
    width, height = size
    x, y = xy
    if not (-OUTSIDE_SLACK <= x <= width + OUTSIDE_SLACK and -OUTSIDE_SLACK <= y <= height + OUTSIDE_SLACK):
        raise ValueError(f"{what} {value!r} lies outside the {width} x {height} image")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
