"""The supervised warm-up's scenes and its one-shape-per-image curriculum."""

from __future__ import annotations

import math
import random
import shutil

import pytest

from samr1.tools.warmup import supervised_warmup, warmup_sample


def test_single_shape_scenes_hold_one_shape_and_the_others_two_to_four():
    rng = random.Random(0)
    single = [warmup_sample(i, 0, 112, 0.0, rng, single_shape=True) for i in range(20)]
    mixed = [warmup_sample(i, 0, 112, 0.0, rng) for i in range(20)]
    mixed_sizes = {s.meta["num_shapes"] for s in mixed}
    assert {s.meta["num_shapes"] for s in single} == {1}
    assert mixed_sizes <= {2, 3, 4} and len(mixed_sizes) > 1
    # One shape: the answer is the queried shape even when other_shape_rate asks for another one.
    always_other = warmup_sample(3, 0, 112, 1.0, random.Random(0), single_shape=True)
    assert always_other.box == warmup_sample(3, 0, 112, 0.0, random.Random(0), single_shape=True).box


@pytest.mark.parametrize("single_shape_steps", [-1, 3])
def test_curriculum_longer_than_the_warmup_is_refused(single_shape_steps):
    with pytest.raises(ValueError, match="single_shape_steps"):
        supervised_warmup("unused", steps=2, single_shape_steps=single_shape_steps)


def test_curriculum_warmup_trains_and_saves(tiny_checkpoints, tmp_path):
    policy = shutil.copytree(tiny_checkpoints["policy"], tmp_path / "policy")
    before = (policy / "model.safetensors").read_bytes()
    losses = supervised_warmup(policy, steps=2, image_size=56, batch_size=2, single_shape_steps=1)
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert (policy / "model.safetensors").read_bytes() != before
