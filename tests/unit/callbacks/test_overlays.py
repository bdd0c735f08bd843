"""Overlays put every colour exactly where the masks, boxes and points say, and nowhere else."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from samr1.callbacks.overlays import (
    GT_BOX_COLOR,
    GT_MASK_COLOR,
    POINT_COLOR,
    PRED_BOX_COLOR,
    PRED_MASK_COLOR,
    draw_box,
    draw_points,
    draw_prediction,
    thumbnail,
    tint,
)

GREY = 100


def _grey(width: int = 20, height: int = 16) -> Image.Image:
    return Image.new("RGB", (width, height), (GREY, GREY, GREY))


def _blend(color, alpha: float = 0.45) -> tuple[int, ...]:
    return tuple(int(np.rint((1 - alpha) * GREY + alpha * c)) for c in color)


def test_tint_blends_exactly_the_target_pixels_and_ignores_255():
    mask = np.zeros((16, 20), dtype=np.uint8)
    mask[2:5, 3:7] = 1
    mask[10:12, 10:12] = 255  # ignored: not drawn
    out = np.asarray(tint(_grey(), mask, GT_MASK_COLOR))
    assert out.shape == (16, 20, 3)
    assert (out[2:5, 3:7] == _blend(GT_MASK_COLOR)).all()
    untouched = np.ones((16, 20), dtype=bool)
    untouched[2:5, 3:7] = False
    assert (out[untouched] == GREY).all()


def test_tint_takes_boolean_masks_and_refuses_a_wrong_shape():
    mask = np.zeros((16, 20), dtype=bool)
    mask[0, 0] = True
    out = np.asarray(tint(_grey(), mask, PRED_MASK_COLOR))
    assert tuple(out[0, 0]) == _blend(PRED_MASK_COLOR) and (out[1:] == GREY).all()
    with pytest.raises(ValueError, match="mask shape"):
        tint(_grey(), np.zeros((20, 16), dtype=bool), PRED_MASK_COLOR)


def test_box_outline_is_the_rectangle_perimeter():
    out = np.asarray(draw_box(_grey(), (3.2, 2.0, 10.0, 8.4), width=1))  # corners round to (3, 2, 10, 8)
    painted = (out == PRED_BOX_COLOR).all(axis=-1)
    expected = np.zeros((16, 20), dtype=bool)
    expected[2, 3:11] = expected[8, 3:11] = True
    expected[2:9, 3] = expected[2:9, 10] = True
    assert (painted == expected).all()


def test_dashed_box_stays_on_the_perimeter_and_leaves_gaps():
    out = np.asarray(draw_box(_grey(40, 40), (2, 2, 37, 37), GT_BOX_COLOR, width=1, dash=4))
    painted = (out == GT_BOX_COLOR).all(axis=-1)
    perimeter = np.zeros((40, 40), dtype=bool)
    perimeter[2, 2:38] = perimeter[37, 2:38] = perimeter[2:38, 2] = perimeter[2:38, 37] = True
    assert not (painted & ~perimeter).any()
    assert painted[2, 2:6].all() and not painted[2, 6:10].any()  # dash of 4, gap of 4 along the top edge
    assert 0.3 < painted.sum() / perimeter.sum() < 0.7


def test_points_are_dots_centred_on_their_pixel():
    out = np.asarray(draw_points(_grey(), [(5.4, 6.6), (15, 3)], radius=2))
    assert tuple(out[7, 5]) == POINT_COLOR  # (x 5, y 7) after rounding
    assert tuple(out[3, 15]) == POINT_COLOR
    assert (out[12:, :] == GREY).all()  # nothing far from the points


def test_prediction_overlay_layers_everything():
    gt = np.zeros((16, 20), dtype=np.uint8)
    gt[1:4, 1:4] = 1
    pred = np.zeros((16, 20), dtype=bool)
    pred[9:15, 13:19] = True
    image = draw_prediction(_grey(), gt_mask=gt, pred_mask=pred, box=(12, 8, 19, 15), points=[(17, 13)])
    assert image.mode == "RGB" and image.size == (20, 16)
    out = np.asarray(image)
    assert tuple(out[2, 2]) == _blend(GT_MASK_COLOR)
    assert tuple(out[10, 14]) == _blend(PRED_MASK_COLOR)
    assert tuple(out[8, 12]) == PRED_BOX_COLOR  # box corner
    assert tuple(out[13, 17]) == POINT_COLOR
    assert tuple(out[6, 6]) == (GREY, GREY, GREY)


def test_thumbnail_bounds_the_longer_side():
    assert thumbnail(_grey(1000, 500), 512).size == (512, 256)
    small = _grey()
    assert thumbnail(small, 512) is small and thumbnail(small, None) is small
