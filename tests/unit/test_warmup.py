"""The supervised warm-up: its scenes, its one-shape-per-image curriculum, its learning-rate schedule."""

from __future__ import annotations

import json
import math
import random
import shutil

import pytest

from samr1.tools.warmup import scheduled_lr, supervised_warmup, warmup_sample


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


def test_the_learning_rate_is_constant_then_falls_linearly_over_the_decay_steps():
    lrs = [scheduled_lr(step, 10, 1.0, 4) for step in range(10)]
    assert lrs == [1.0] * 6 + [1.0, 0.75, 0.5, 0.25]
    assert [scheduled_lr(step, 3, 2e-3, 0) for step in range(3)] == [2e-3] * 3


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(decay_steps=3), "decay_steps must be in \\[0, steps=2\\]"),
        (dict(decay_steps=-1), "decay_steps must be in"),
        (dict(batch_size=0), "batch_size must be at least 1"),
    ],
)
def test_a_schedule_outside_the_run_is_refused_before_anything_loads(options, message):
    with pytest.raises(ValueError, match=message):
        supervised_warmup("unused", steps=2, **options)


def test_the_decay_takes_effect(tiny_checkpoints, tmp_path):
    weights = []
    for decay_steps in (0, 2):
        policy = shutil.copytree(tiny_checkpoints["policy"], tmp_path / f"policy-{decay_steps}")
        supervised_warmup(policy, steps=2, image_size=56, batch_size=2, decay_steps=decay_steps)
        weights.append((policy / "model.safetensors").read_bytes())
    assert weights[0] != weights[1]


def test_samr1_tiny_passes_the_warmup_options_through_and_records_them(tmp_path):
    from samr1.cli import tiny_main

    options = ["--warmup-steps", "2", "--warmup-image-size", "56", "--warmup-batch-size", "2"]
    options += ["--warmup-decay-steps", "1", "--warmup-other-shape-rate", "0.5", "--warmup-lr", "1e-3"]
    tiny_main([str(tmp_path), "--size", "tiny", *options])
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert {k: manifest[k] for k in manifest if k.startswith("warmup_") and k != "warmup_prompt"} == {
        "warmup_steps": 2,
        "warmup_lr": 1e-3,
        "warmup_batch_size": 2,
        "warmup_decay_steps": 1,
        "warmup_other_shape_rate": 0.5,
        "warmup_single_shape_steps": 0,
    }
