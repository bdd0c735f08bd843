"""`samr1 test` scores the reward's mask: the mean continuous mask reward equals gIoU exactly, under both rules."""

from __future__ import annotations

import json

import pytest
import yaml

from samr1.cli import main


@pytest.mark.parametrize("selection", ["best", "single"])
def test_samr1_test_mean_continuous_mask_reward_is_its_giou(tmp_path, warm_checkpoints, selection):
    """Reward and evaluation score the same SAM mask: the mean continuous mask reward is gIoU, exactly."""
    with open("configs/demo.yaml") as f:
        config = yaml.safe_load(f)
    config["model"].update(
        model_path=warm_checkpoints["policy"],
        sam_checkpoint=warm_checkpoints["sam_checkpoint"],
        max_new_tokens=64,
        mask_selection=selection,
        predictions_path=str(tmp_path / "pred.jsonl"),
        rewards=[{"class_path": "samr1.rewards.MaskIoUReward", "init_args": {"mapping": "continuous"}}],
    )
    config["data"]["init_args"].update(num_test=8, eval_batch_size=4)
    config["trainer"].update(default_root_dir=str(tmp_path), logger=False, callbacks=[])
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    main(["test", "--config", str(tmp_path / "config.yaml")])
    metrics = json.loads((tmp_path / "pred.metrics.json").read_text())
    assert metrics["samples"] == 8 and 0.0 < metrics["giou"] < 1.0
    assert metrics["reward/mask_iou"] == metrics["giou"]
    assert metrics["settings"]["mask_selection"] == selection
    rows = [json.loads(line) for line in (tmp_path / "pred.jsonl").read_text().splitlines()]
    assert sum(row["iou"] for row in rows) / 8 == pytest.approx(metrics["giou"], abs=1e-12)
