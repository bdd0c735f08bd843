"""Mask helpers against hand-made expectations: LISA's rasterisation, COCO RLE, tight boxes, GT points."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures_data import compressed_rle, rect, rect_polygon, uncompressed_rle

from samr1.datamodules.masks import (
    decode_coco_segmentation,
    decode_rle,
    encode_rle,
    inscribed_circle_points,
    paint_polygons,
    polygon_area,
    tight_box,
)


def test_rectangle_outline_and_fill_cover_both_ends_with_truncated_points():
    mask = paint_polygons([([[1.99, 2.5], [5.7, 2.5], [5.7, 4.2], [1.99, 4.2]], 1)], 8, 9)
    expected = np.zeros((8, 9), dtype=np.uint8)
    expected[2:5, 1:6] = 1  # int32 truncation: x 1..5, y 2..4, inclusive
    np.testing.assert_array_equal(mask, expected)
    assert polygon_area(rect(1, 2, 5, 4), 8, 9) == 15


def test_slanted_edges_match_the_opencv_lisa_ran():
    # Rasterised by OpenCV 4.8 (LISA's pin; 4.10 agrees). OpenCV >= 4.11 leaves out the pixel at row 2, col 8.
    mask = paint_polygons([([[8.6, 1.2], [7.9, 3.99], [3.5, 4.7]], 1)], 6, 12)
    expected = np.array(
        [
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0],
            [0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0],
            [0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0],
            [0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ],
        dtype=np.uint8,
    )
    np.testing.assert_array_equal(
        mask, expected, err_msg="install opencv-python-headless<4.11 (LISA's rasteriser)"
    )


def test_polygons_paint_in_decreasing_area_order_whatever_the_list_order():
    small, large = (rect(3, 3, 4, 4), 255), (rect(1, 1, 6, 6), 1)
    expected = np.zeros((8, 8), dtype=np.uint8)
    expected[1:7, 1:7] = 1
    expected[3:5, 3:5] = 255
    np.testing.assert_array_equal(paint_polygons([small, large], 8, 8), expected)
    np.testing.assert_array_equal(paint_polygons([large, small], 8, 8), expected)
    assert not paint_polygons([], 3, 4).any()


def test_polygon_outside_the_image_is_clipped():
    mask = paint_polygons([(rect(-3, -2, 2, 1), 1)], 4, 4)
    expected = np.zeros((4, 4), dtype=np.uint8)
    expected[0:2, 0:3] = 1
    np.testing.assert_array_equal(mask, expected)


@pytest.mark.parametrize("bad", [[], [[1, 2, 3]], [["a", "b"]], None])
def test_malformed_polygons_raise_value_error(bad):
    with pytest.raises(ValueError):
        paint_polygons([(bad, 1)], 4, 4)


def test_rle_round_trip_and_both_coco_rle_kinds():
    mask = np.zeros((7, 5), dtype=bool)
    mask[1:4, 2:5] = True
    mask[6, 0] = True
    rle = encode_rle(mask)
    assert rle["size"] == [7, 5] and isinstance(rle["counts"], str)
    np.testing.assert_array_equal(decode_rle(rle), mask)
    np.testing.assert_array_equal(decode_rle(uncompressed_rle(mask)), mask)
    np.testing.assert_array_equal(decode_coco_segmentation(compressed_rle(mask), 7, 5), mask)
    np.testing.assert_array_equal(decode_coco_segmentation([compressed_rle(mask)], 7, 5), mask)


def test_coco_polygons_are_unioned():
    expected = np.zeros((10, 12), dtype=bool)
    expected[1:6, 1:8] = True
    expected[4:9, 5:11] = True
    segmentation = [rect_polygon(1, 1, 8, 6), rect_polygon(5, 4, 11, 9)]
    np.testing.assert_array_equal(decode_coco_segmentation(segmentation, 10, 12), expected)
    with pytest.raises(ValueError, match="differs"):
        decode_coco_segmentation(compressed_rle(expected), 9, 12)
    with pytest.raises(ValueError, match="unsupported"):
        decode_coco_segmentation([], 10, 12)


def test_tight_box_uses_pixel_edges():
    mask = np.zeros((6, 8), dtype=bool)
    mask[2:4, 3:6] = True
    assert tight_box(mask) == (3.0, 2.0, 6.0, 4.0)
    assert tight_box(np.zeros((3, 3), dtype=bool)) is None


def test_inscribed_circles_of_two_squares_are_their_centres():
    mask = np.zeros((20, 30), dtype=bool)
    mask[2:11, 2:11] = True  # 9 x 9, centre (6, 6)
    mask[12:17, 20:25] = True  # 5 x 5, centre (22, 14)
    assert inscribed_circle_points(mask) == [(6.0, 6.0), (22.0, 14.0)]


def test_second_circle_lies_outside_the_first_in_one_blob():
    mask = np.zeros((11, 31), dtype=bool)
    mask[1:10, 1:30] = True  # a 9 x 29 bar: every row-5 pixel from x=5 to 25 is 5 from the border
    first, second = inscribed_circle_points(mask)
    assert first == (5.0, 5.0)  # first maximum in row-major order
    assert second[1] == 5.0 and second[0] >= 10.0  # outside the first disc (radius 5)
    assert mask[int(second[1]), int(second[0])]


def test_tiny_and_empty_masks():
    one = np.zeros((4, 4), dtype=bool)
    one[2, 1] = True
    assert inscribed_circle_points(one) == [(1.0, 2.0), (1.0, 2.0)]
    assert inscribed_circle_points(np.zeros((4, 4), dtype=bool)) is None
    edge = np.ones((3, 3), dtype=bool)  # the image border counts as boundary
    assert inscribed_circle_points(edge, count=1) == [(1.0, 1.0)]
