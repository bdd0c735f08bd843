"""The demo's offline tools: the tiny SAM trainer's checkpoint loads through build_sam; the report's table and
training-log choice; the demo policy's rotary embedding separates image rows and columns; training the SAM
beside the warm-up writes what training them one after the other does."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from samr1.tools.demo_report import comparison_table, curve_panels, metrics_csv, read_series
from samr1.tools.tiny_sam import train_tiny_sam, write_trained_sam


def test_trained_tiny_sam_is_an_official_state_dict_that_build_sam_loads(tmp_path):
    report = write_trained_sam(tmp_path / "sam.pth", steps=2, eval_samples=2)
    state = torch.load(report.path, weights_only=True)
    assert "image_encoder.patch_embed.proj.weight" in state and "mask_decoder.iou_token.weight" in state
    assert report.steps == 2 and report.eval_samples == 2 and 0.0 <= report.gt_box_points_iou <= 1.0
    again = train_tiny_sam(steps=2, seed=0)
    assert all(torch.equal(state[k], v) for k, v in again.state_dict().items())  # seeded


def test_comparison_table_lists_summary_metrics_as_percent_and_rewards_as_values():
    before = {"samples": 32, "giou": 0.05, "ciou": 0.04, "reward/mask_iou": 0.1875}
    after = {"samples": 32, "giou": 0.1258, "ciou": 0.05, "reward/mask_iou": 0.5}
    lines = comparison_table(before, after).splitlines()
    assert lines[2] == f"{'giou':<26}{'5.00%':>10}{'12.58%':>10}{'+7.58%':>10}"
    assert lines[4] == f"{'reward/mask_iou':<26}{'0.1875':>10}{'0.5000':>10}{'+0.3125':>10}"
    assert lines[5] == f"{'samples':<26}{'32':>10}{'32':>10}"


def test_report_reads_the_fit_log_not_the_test_runs_logs(tmp_path):
    for version, header, row in (
        (0, "epoch,step,test/giou", "0,0,0.05"),
        (1, "epoch,step,train/reward/mean,train/reward/mask_iou,train/kl", "0,1,2.0,0.5,0.01"),
        (2, "epoch,step,test/giou", "0,40,0.12"),
    ):
        folder = tmp_path / "csv" / f"version_{version}"
        folder.mkdir(parents=True)
        (folder / "metrics.csv").write_text(f"{header}\n{row}\n")
    path = metrics_csv(tmp_path)
    assert path.parent.name == "version_1"
    series = read_series(path)
    assert series["train/reward/mask_iou"] == ([1.0], [0.5])
    # total reward, the one reward, mask IoU, KL, completion length
    assert len(curve_panels(series)) == 5


def test_demo_policy_rotary_tells_image_rows_and_columns_apart(tmp_path):
    # Multimodal RoPE rotates an image token's query/key pairs by its (t, h, w) grid position, and attention
    # sees only the rotation between two tokens; the demo policy must see a shape's row and column through it.
    from transformers import Qwen2_5_VLConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLRotaryEmbedding

    from samr1.tools.tiny import build_tiny_qwen

    config = Qwen2_5_VLConfig.from_pretrained(build_tiny_qwen(tmp_path, size="demo"))
    rotary = Qwen2_5_VLRotaryEmbedding(config.text_config)
    # token (0, 0) and the tokens 3 rows and 3 columns away: the ends of a 112 px image's 4 x 4 token grid
    positions = torch.tensor([[0, 0, 0], [0, 3, 0], [0, 0, 3]]).T[:, None, :]  # [3 sections, 1, 3 tokens]
    cos, sin = rotary(torch.zeros(1), positions)
    half = cos.shape[-1] // 2
    angles = torch.atan2(sin[0, :, :half], cos[0, :, :half])  # [token, pair]; token 0 turns by 0
    assert angles[0].abs().max() == 0
    assert angles[1].abs().max() > 0.9  # rows (base 1e6: 0.095)
    assert angles[2].abs().max() > 0.15  # columns (base 1e6: 0.0005)


def test_sam_trained_beside_the_warmup_equals_training_them_one_after_the_other(tmp_path):
    # `samr1 tiny` trains the SAM in a second process at one thread while the warm-up runs here with one
    # thread fewer; the checkpoints must be those of the sequential path (the SAM's: of one-thread training).
    from safetensors.torch import load_file

    from samr1.tools.tiny import write_tiny_checkpoints

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        kwargs = dict(size="tiny", seed=0, warmup_steps=3, warmup_batch_size=2, sam_steps=2)
        beside = write_tiny_checkpoints(tmp_path / "beside", **kwargs)
        assert beside["sam_trained_beside_warmup"] and torch.get_num_threads() == 2  # threads handed back
        alone = write_tiny_checkpoints(tmp_path / "alone", parallel=False, **kwargs)
        assert not alone["sam_trained_beside_warmup"]
        torch.set_num_threads(1)
        one_thread = train_tiny_sam(steps=2, seed=0).state_dict()
    finally:
        torch.set_num_threads(threads)
    policy = [load_file(Path(m["policy"]) / "model.safetensors") for m in (beside, alone)]
    assert policy[0].keys() == policy[1].keys()
    assert all(torch.equal(policy[0][k], policy[1][k]) for k in policy[0])
    sam = torch.load(beside["sam_checkpoint"], weights_only=True)
    assert all(torch.equal(sam[k], v) for k, v in one_thread.items())


def test_sam_training_beside_reports_the_second_process_error():
    from samr1.tools.tiny_sam import SamTrainingBeside

    threads = torch.get_num_threads()
    with SamTrainingBeside(steps=1, no_such_option=True) as job:
        assert torch.get_num_threads() == max(1, threads - 1)
        with pytest.raises(RuntimeError, match="no_such_option"):
            job.result()
    assert torch.get_num_threads() == threads
