"""Synthetic shapes: seeded scenes, one colour per shape, queries without positions, a position-coding ramp."""

from __future__ import annotations

import numpy as np
import pytest

from samr1.datamodules.synthetic import COLOURS, SyntheticShapesDataset, make_scene, make_shapes_sample


def test_sample_is_the_same_for_the_same_seed_and_its_mask_box_and_points_agree():
    sample = make_shapes_sample(0, "test", 0, 112, 2, 4)
    again = make_shapes_sample(0, "test", 0, 112, 2, 4)
    assert sample.query == again.query == "the large orange circle"
    assert np.array_equal(np.asarray(sample.image), np.asarray(again.image))
    assert sample.box == (78.0, 3.0, 109.0, 35.0)
    assert int(sample.mask.sum()) == 780
    assert sample.meta["cell"] == (0, 2) and sample.meta["num_shapes"] == 2
    for x, y in sample.points:
        assert sample.mask[int(y), int(x)] == 1
    other_seed = make_shapes_sample(0, "test", 1, 112, 2, 4)
    assert not np.array_equal(np.asarray(other_seed.image), np.asarray(sample.image))


def test_every_shape_has_its_own_colour_and_the_query_names_no_position():
    for index in range(40):
        _, shapes, target = make_scene(index, "train", 0, 112, 2, 4)
        assert len({s.colour for s in shapes}) == len(shapes)
        assert len({(s.row, s.col) for s in shapes}) == len(shapes)
        query = shapes[target].query
        assert query.split()[2] in COLOURS and not any(w in query for w in ("top", "left", "centre"))


def test_the_background_ramp_codes_position():
    image = np.asarray(make_scene(0, "test", 0, 112, 2, 4)[0])
    assert image[0, 0].tolist() == [0, 33, 0]
    assert image[111, 0].tolist() == [0, 33, 110]
    assert image[111, 111].tolist() == [110, 33, 110]


def test_more_shapes_than_colours_is_refused():
    with pytest.raises(ValueError, match="one colour per shape"):
        SyntheticShapesDataset(min_shapes=2, max_shapes=len(COLOURS) + 1)
