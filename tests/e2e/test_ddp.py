"""Two CPU processes (DDP, gloo) give exactly the metrics, rewards and predictions of one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import yaml


def _config(tmp_path, warm_checkpoints, name: str) -> str:
    with open("configs/demo.yaml") as f:
        config = yaml.safe_load(f)
    config["model"].update(
        model_path=warm_checkpoints["policy"],
        sam_checkpoint=warm_checkpoints["sam_checkpoint"],
        max_new_tokens=64,
        predictions_path=str(tmp_path / name / "pred.jsonl"),
    )
    # 15 test samples: an odd count, so a padding sampler would count one twice.
    config["data"]["init_args"].update(num_test=15, eval_batch_size=3)
    config["trainer"].update(default_root_dir=str(tmp_path / name), logger=False, callbacks=[])
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _run_test(config: str, devices: int) -> None:
    cmd = [sys.executable, "-m", "samr1.cli", "test", "--config", config, f"--trainer.devices={devices}"]
    if devices > 1:
        cmd.append("--trainer.strategy=ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def test_two_process_ddp_matches_one_process(tmp_path, warm_checkpoints):
    _run_test(_config(tmp_path, warm_checkpoints, "one"), devices=1)
    _run_test(_config(tmp_path, warm_checkpoints, "two"), devices=2)
    one = json.loads((tmp_path / "one" / "pred.metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "pred.metrics.json").read_text())
    assert one["samples"] == two["samples"] == 15
    assert one == two  # gIoU, cIoU, box accuracy, parse failures and every reward mean, exactly
    assert one["parse_failure_rate"] < 0.5 and one["giou"] > 0  # the warmed-up policy gives real answers

    def rows(name):
        lines = (tmp_path / name / "pred.jsonl").read_text().splitlines()
        return sorted((json.loads(line) for line in lines), key=lambda r: r["id"])

    assert rows("one") == rows("two")


def test_two_process_ddp_training_keeps_replicas_identical(tmp_path, warm_checkpoints):
    # Every rank samples its own completions; the averaged gradients must keep the policies equal.
    config = _config(tmp_path, warm_checkpoints, "fit")
    cmd = [
        sys.executable,
        "-m",
        "samr1.cli",
        "fit",
        "--config",
        config,
        "--trainer.devices=2",
        "--trainer.strategy=ddp",
        "--trainer.max_steps=4",
        "--trainer.limit_val_batches=0",
        "--trainer.callbacks+=toy_rewards.ParameterChecksum",
        f"--trainer.callbacks.out_dir={tmp_path}",
    ]
    tests_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # fixtures_data, toy_rewards
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": tests_dir}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    start, end0, end1 = ((tmp_path / name).read_text() for name in ("start0.txt", "end0.txt", "end1.txt"))
    assert end0 == end1
    assert end0 != start, "the policy did not change, so the check above proves nothing"
