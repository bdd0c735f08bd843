"""W&B tables: an offline run of a short fit holds the rollout and validation tables with their overlay images."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from samr1.answer import parse_answer
from samr1.callbacks.overlays import GT_MASK_COLOR, POINT_COLOR, PRED_BOX_COLOR, PRED_MASK_COLOR
from samr1.callbacks.wandb_logging import RolloutTableCallback, metric_rows, rollout_rows
from samr1.cli import main
from samr1.modules.step import StepRecord
from samr1.sample import CoordTransform, SegSample

pytest.importorskip("wandb")

ROLLOUT_COLUMNS = ["step", "sample_id", "query", "overlay", "completion", "total_reward"]
REWARDS = ["think_format", "answer_format", "mask_iou"]


def wandb_records(path: Path):
    """The protobuf records of a `.wandb` transaction log (LevelDB log format: 32 KiB blocks, 7-byte headers)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last fragment of one
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def logged_tables(run_dir: Path) -> dict[str, list[tuple[dict, dict[str, Path]]]]:
    """{table key: [(table JSON as logged, {artifact path: staged local file}), ...]} in logging order."""
    tables: dict[str, list] = {}
    for record in wandb_records(next(run_dir.glob("*.wandb"))):
        if record.WhichOneof("record_type") != "artifact" or record.artifact.type != "run_table":
            continue
        files = {e.path: Path(e.local_path) for e in record.artifact.manifest.contents}
        (name,) = [p for p in files if p.endswith(".table.json")]
        tables.setdefault(name.removesuffix(".table.json"), []).append(
            (json.loads(files[name].read_text()), files)
        )
    return tables


def _config(tmp_path, tiny_checkpoints) -> str:
    with open("configs/demo.yaml") as f:
        config = yaml.safe_load(f)
    config["model"].update(
        model_path=tiny_checkpoints["policy"],
        sam_checkpoint=tiny_checkpoints["sam_checkpoint"],
        sam_model_type=tiny_checkpoints["sam_model_type"],
        max_new_tokens=8,
        num_iterations=1,
    )
    config["data"]["init_args"].update(batch_size=1, eval_batch_size=3)
    config["trainer"].update(
        default_root_dir=str(tmp_path), max_steps=2, val_check_interval=2, limit_val_batches=1
    )
    config["trainer"]["logger"] = [
        {
            "class_path": "lightning.pytorch.loggers.WandbLogger",
            "init_args": {"offline": True, "save_dir": str(tmp_path), "project": "samr1-test"},
        }
    ]
    config["trainer"]["callbacks"] = [
        {
            "class_path": "samr1.callbacks.RolloutTableCallback",
            "init_args": {"every_n_steps": 1, "max_rows": 3},
        }
    ]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_offline_run_holds_rollout_and_validation_tables(tmp_path, tiny_checkpoints, monkeypatch):
    for var in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home" / var.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    # one prompt x group_size 4 per step, one optimiser step each: 2 rollout batches, then one validation
    import wandb

    try:
        main(["fit", "--config", _config(tmp_path, tiny_checkpoints)])
    finally:
        wandb.finish()  # WandbLogger leaves the run open (it closes at exit): flush it, and free the global run

    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    files = run_dir / "files" / "media" / "table"
    assert len(list((files / "train").glob("rollouts_*.table.json"))) == 2
    assert len(list((files / "val").glob("predictions_*.table.json"))) == 1

    tables = logged_tables(run_dir)
    assert len(tables["train/rollouts"]) == 2
    for table, staged in tables["train/rollouts"]:
        assert table["columns"] == ROLLOUT_COLUMNS + REWARDS
        assert len(table["data"]) == 3  # max_rows
        for row in table["data"]:
            cell = dict(zip(table["columns"], row))
            assert cell["sample_id"].startswith("shapes-train-")
            assert cell["overlay"]["_type"] == "image-file"
            image = staged[cell["overlay"]["path"]]  # the referenced image is in the run's artifact
            assert image.is_file()
            with Image.open(image) as im:
                assert im.size == (112, 112)
            assert cell["total_reward"] == pytest.approx(sum(cell[name] for name in REWARDS))

    ((predictions, staged),) = tables["val/predictions"]
    assert predictions["columns"] == [
        "step",
        "dataloader",
        "sample_id",
        "query",
        "overlay",
        "completion",
        "iou",
        "failure",
    ]
    assert len(predictions["data"]) == 3
    for row in predictions["data"]:
        assert row[2].startswith("shapes-val-")
        assert staged[row[4]["path"]].is_file()

    ((metrics, _),) = tables["val/metrics"]
    assert metrics["columns"] == ["step", "group", "metric", "value"]
    names = {(group, metric) for _, group, metric, _ in metrics["data"]}
    assert ("all", "giou") in names and ("all", "parse_failure_rate") in names


def _sample() -> SegSample:
    mask = np.zeros((40, 40), dtype=np.uint8)
    mask[5:15, 5:15] = 1
    image = Image.new("RGB", (40, 40), (100, 100, 100))
    # the model saw the image at 80 x 80: its answers are in 2x pixels
    return SegSample(
        id="s0", query="the square", mask=mask, image=image, transform=CoordTransform((40, 40), (80, 80))
    )


def test_rollout_rows_draw_the_answer_and_sams_mask_in_original_pixels():
    sample = _sample()
    texts = [
        '<think>x</think><answer>{"bbox": [40, 40, 76, 76], "points_1": [60, 60], "points_2": [70, 50]}</answer>',
        "no answer",
    ]
    sam_mask = np.zeros((40, 40), dtype=bool)
    sam_mask[22:26, 22:26] = True
    record = StepRecord(
        step=7,
        prompts=SimpleNamespace(samples=[sample]),
        rollouts=SimpleNamespace(texts=texts, prompt_index=torch.tensor([0, 0])),
        answers=[parse_answer(t) for t in texts],
        total_reward=torch.tensor([3.0, 0.0]),
        rewards={"format": torch.tensor([1.0, 0.0]), "mask_iou": torch.tensor([2.0, 0.0])},
        advantages=torch.tensor([1.0, -1.0]),
        masks=[sam_mask, None],
    )
    columns, rows = rollout_rows(record, step=7, max_rows=16)
    assert columns == ROLLOUT_COLUMNS + ["format", "mask_iou"]
    assert [r[0] for r in rows] == [7, 7] and rows[0][1] == "s0" and rows[0][4] == texts[0]
    assert rows[0][5:] == [3.0, 1.0, 2.0]
    first, second = (np.asarray(r[3]) for r in rows)
    assert tuple(first[20, 20]) == PRED_BOX_COLOR  # box (40, 40, ...) / 2 -> corner at (20, 20)
    assert tuple(first[30, 30]) == POINT_COLOR  # points_1 (60, 60) / 2
    assert tuple(first[23, 23]) == tuple(int(np.rint(0.55 * 100 + 0.45 * c)) for c in PRED_MASK_COLOR)
    assert tuple(first[10, 10]) == tuple(int(np.rint(0.55 * 100 + 0.45 * c)) for c in GT_MASK_COLOR)
    assert (second[20:40, 20:40] == 100).all()  # no answer: only the GT is drawn
    assert rollout_rows(record, step=7, max_rows=1)[1][0][1] == "s0"
    assert len(rollout_rows(record, step=7, max_rows=1)[1]) == 1


def test_metric_rows_split_groups():
    rows = metric_rows({"val/giou": 0.5, "val/short/ciou": torch.tensor(0.25), "train/loss": 1.0}, step=3)
    assert rows == [[3, "all", "giou", 0.5], [3, "short", "ciou", 0.25]]


def test_callback_is_a_no_op_without_a_wandb_logger():
    trainer = SimpleNamespace(loggers=[], is_global_zero=True, global_step=0, sanity_checking=False)
    callback = RolloutTableCallback(every_n_steps=1)
    module = SimpleNamespace(last_step=None)
    callback.on_train_batch_end(trainer, module, None, [], 0)
    callback.on_validation_epoch_start(trainer, module)
    callback.on_validation_batch_end(trainer, module, None, [_sample()], 0)
    callback.on_validation_end(trainer, module)
    with pytest.raises(ValueError, match="positive"):
        RolloutTableCallback(every_n_steps=0)
