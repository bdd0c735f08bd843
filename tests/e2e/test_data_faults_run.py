"""`on_error: skip` keeps a run going at read time: a fit trains on the rest, a validation reports the unreadable
sample; `on_error: error` stops naming it. The broken data are built here (the fault suite of the data path is
tests/unit/datamodules/test_faults_data.py)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from fixtures_data import rect
from PIL import Image
from toy_rewards import DigitShareReward

from samr1.datamodules import JsonlSegDataModule, SampleError
from samr1.modules.module import GRPOModule


@pytest.fixture
def one_truncated(tmp_path):
    """a, b, c, d: b's image is a truncated JPEG (its header reads, so set-up passes)."""
    rng = np.random.default_rng(0)
    for name in "ac":
        Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(tmp_path / f"{name}.jpg")
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(tmp_path / "b.jpg", quality=95)
    (tmp_path / "b.jpg").write_bytes(
        (tmp_path / "b.jpg").read_bytes()[: int((tmp_path / "b.jpg").stat().st_size * 0.7)]
    )
    lines = [
        {
            "id": n,
            "image": f"{i}.jpg",
            "query": f"query {n}",
            "polygons": [rect(1, 1, 4, 4)],
            "box": [0, 0, 4, 4],
        }
        for n, i in zip("abcd", "abcc")
    ]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def _tiny_module(tiny_checkpoints, **extra):
    return GRPOModule(
        model_path=tiny_checkpoints["policy"],
        rewards=[DigitShareReward()],
        image_size=(56, 56),
        group_size=2,
        max_new_tokens=4,
        micro_batch_size=4,
        **extra,
    )


def test_fit_under_skip_trains_on_the_rest_and_error_stops_naming_the_sample(
    one_truncated, tiny_checkpoints, cpu_trainer
):
    data = JsonlSegDataModule(path=str(one_truncated), batch_size=2, on_error="skip")
    trainer = cpu_trainer(max_steps=2, default_root_dir=one_truncated.parent / "skip")
    trainer.fit(_tiny_module(tiny_checkpoints), datamodule=data)
    assert trainer.global_step == 2  # both batches of the epoch, b replaced by c
    assert data.read_failures.count("train") == 1 and len(data.dataset("train").skipped) == 1
    strict = JsonlSegDataModule(path=str(one_truncated), batch_size=2)
    with pytest.raises(SampleError, match=re.escape(f"{one_truncated}:2: sample b: cannot read image")):
        cpu_trainer(max_steps=2, default_root_dir=one_truncated.parent / "error").fit(
            _tiny_module(tiny_checkpoints), datamodule=strict
        )


def test_validation_under_skip_reports_the_unreadable_sample(one_truncated, tiny_checkpoints, cpu_trainer):
    module = _tiny_module(
        tiny_checkpoints,
        sam_checkpoint=tiny_checkpoints["sam_checkpoint"],
        sam_model_type=tiny_checkpoints["sam_model_type"],
    )
    data = JsonlSegDataModule(path=None, val_path=str(one_truncated), eval_batch_size=2, on_error="skip")
    (metrics,) = cpu_trainer(default_root_dir=one_truncated.parent).validate(module, datamodule=data)
    assert metrics["val/unreadable_samples"] == 1.0
    assert data.read_failures.messages("val")[0].startswith(f"{one_truncated}: {one_truncated}:2: sample b")
