"""benchmarks/gpu_check.py keeps working: its --smoke run is the GPU check's code at tiny size on CPU."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_run_reports_every_figure_for_both_strategies(gpu_check, tmp_path):
    report = gpu_check.main(["--smoke", "--out", str(tmp_path / "gpu_check.json")])
    assert (tmp_path / "gpu_check.json").is_file()
    assert report["model"]["tied"] and report["workload"]["group_size"] == 8
    assert set(report["runs"]) == {"unsharded", "fsdp2"}
    for run in report["runs"].values():
        assert run["generated_tokens_per_step"] == 8 * 16  # EOS banned: every completion is full length
        assert all(seconds > 0 for seconds in run["seconds_per_phase"].values())
        assert 0 < run["prefill_s"] < run["rollout_s"]
        assert run["decode_tokens_per_s"] > 0 and run["update_tflops"] > 0
        assert run["update_mfu"] is None and run["peak_memory_gib"] is None  # no GPU peak to compare with


def test_update_flops_and_decode_bytes_count_what_they_say(gpu_check):
    counts = {"params_layers": 10, "params_lm_head": 5}
    cfg = {"hidden_size": 2, "num_hidden_layers": 1, "num_attention_heads": 1, "num_key_value_heads": 1}
    step = {"completions": 2, "new_tokens": 3, "prompt_tokens": 4, "prompts": 1}
    hp = SimpleNamespace(group_size=2, micro_batch_size=1, num_iterations=1)
    # 2 micro-batches, each prefilling the prompt: 2 x 4 + 2 x 3 tokens through the layers, 6 through lm_head;
    # (query, key) pairs 2 x 10 (causal prefill) + 2 x (3 x 4 + 6); x 3 for forward + backward.
    assert gpu_check.update_flops(step, counts, cfg, hp) == 3 * (2 * 10 * 14 + 2 * 5 * 6 + 4 * 2 * 56)
    # bf16 weights (layers, lm_head, final norm) + K and V of the prompt once (4 tokens, shared by both
    # completions) and of each completion's own tokens (mean 1.5).
    assert gpu_check.decode_bytes(step, counts, cfg) == 2 * 17 + 2 * 1 * 1 * 2 * 2 * (4 + 2 * 1.5)
    assert gpu_check.decode_bytes({**step, "prompts": 2}, counts, cfg) == 2 * 17 + 2 * 1 * 1 * 2 * 2 * (8 + 3)
