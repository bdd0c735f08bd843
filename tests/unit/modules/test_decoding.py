"""Evaluation decoding follows the checkpoint's generation_config (repetition penalty), overridable, reported."""

from __future__ import annotations

import json
import shutil

import pytest

from samr1.datamodules.synthetic import make_shapes_sample
from samr1.models.qwen2_5_vl.loading import generation_defaults
from samr1.modules.evaluation import summary_table
from samr1.modules.module import GRPOModule
from samr1.modules.rollout import generate_rollouts


def _with_generation_config(tmp_path, tiny_checkpoints, **settings) -> str:
    path = tmp_path / "policy"
    shutil.copytree(tiny_checkpoints["policy"], path)
    config = json.loads((path / "generation_config.json").read_text())
    (path / "generation_config.json").write_text(json.dumps({**config, **settings}))
    return str(path)


def test_generation_defaults_read_the_repetition_penalty(tmp_path, tiny_checkpoints):
    qwen = _with_generation_config(  # Qwen2.5-VL-7B-Instruct's file, in what matters to greedy decoding
        tmp_path, tiny_checkpoints, repetition_penalty=1.05, temperature=1e-6, top_p=0.001, top_k=1
    )
    assert generation_defaults(qwen) == {"repetition_penalty": 1.05}
    assert generation_defaults(tiny_checkpoints["policy"]) == {}  # the tiny file sets none
    (tmp_path / "bare").mkdir()
    assert generation_defaults(str(tmp_path / "bare")) == {}  # no generation_config.json at all


def test_module_decodes_with_the_checkpoint_penalty_unless_overridden(tmp_path, tiny_checkpoints):
    path = _with_generation_config(tmp_path, tiny_checkpoints, repetition_penalty=1.3)
    module = GRPOModule(model_path=path, max_new_tokens=7, image_size=(56, 56))
    module.configure_model()
    assert module.eval_decoding == {
        "decoding": "greedy",
        "max_new_tokens": 7,
        "repetition_penalty": 1.3,
        "repetition_penalty_source": "generation_config.json",
    }
    off = GRPOModule(model_path=path, eval_repetition_penalty=1.0, eval_max_new_tokens=5)
    off.configure_model()
    assert off.eval_decoding["repetition_penalty"] == 1.0
    assert off.eval_decoding["repetition_penalty_source"] == "model.eval_repetition_penalty"
    assert off.eval_decoding["max_new_tokens"] == 5
    settings = {**module.eval_decoding, "prompt": "samr1", "mask_selection": "best"}
    assert module.eval_settings() == {**settings, "multi_object": False}
    table = summary_table({"giou": 0.5}, 3, settings).splitlines()
    assert table[-7:] == [
        "-" * 38,
        "decoding                        greedy",
        "max_new_tokens                       7",
        "repetition_penalty                 1.3",
        "repetition_penalty_source   generation_config.json",
        "prompt                           samr1",
        "mask_selection                    best",
    ]
    # The greedy evaluation decode is samr1's decode with that penalty (tested against HF in test_sampling).
    samples = [make_shapes_sample(0, "test", 0, 56, 2, 3)]
    prompts, rollouts = module._greedy(samples)
    expected = generate_rollouts(
        module.policy, prompts, module.processor.tokenizer, group_size=1, max_new_tokens=7,
        eos_token_ids=module.eos_ids, pad_token_id=module.processor.tokenizer.pad_token_id,
        banned_token_ids=module.banned_ids, temperature=0.0, repetition_penalty=1.3,
    )  # fmt: skip
    assert rollouts.completion_ids.tolist() == expected.completion_ids.tolist()
    with pytest.raises(ValueError, match="eval_repetition_penalty"):
        GRPOModule(model_path=path, eval_repetition_penalty=0.0)
