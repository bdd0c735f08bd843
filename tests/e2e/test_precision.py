"""Precision that learns: float32 master weights with bf16 compute; bf16 storage only when asked, with a warning."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from toy_rewards import DigitShareReward

from samr1.datamodules import SyntheticShapesDataModule
from samr1.dtypes import precision_warnings
from samr1.models.qwen2_5_vl.loading import load_policy
from samr1.modules.module import GRPOModule

RECIPE = Path(__file__).resolve().parents[2] / "configs" / "samr1_qwen2_5_vl_7b.yaml"


def _full(t: torch.Tensor) -> torch.Tensor:
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().float()


def one_step_changes(module: GRPOModule, tmp_path, **trainer) -> dict[str, tuple[int, int]]:
    """(elements changed, elements) of each trainable decoder tensor after one rollout batch (one AdamW step).

    The embedding is left out: rows of tokens that never occur get no gradient."""
    before = load_policy(module.hparams.model_path, module.hparams.param_dtype).state_dict()
    L.seed_everything(0)
    fit = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        **trainer,
    )
    fit.fit(
        module, datamodule=SyntheticShapesDataModule(num_train=2, image_size=56, batch_size=1, val_split=None)
    )
    after = module.policy.state_dict()
    return {
        key: (int((_full(after[key]) != before[key].float()).sum()), before[key].numel())
        for key in before
        if ".layers." in key or key in ("model.language_model.norm.weight", "lm_head.weight")
    }


def recipe_module(tiny_checkpoints, **overrides) -> tuple[GRPOModule, dict]:
    """GRPOModule with the 7B recipe's model settings, at tiny size on synthetic shapes (CPU)."""
    with open(RECIPE) as f:
        recipe = yaml.safe_load(f)
    settings = {k: v for k, v in recipe["model"].items() if k not in ("rewards", "sam_checkpoint")}
    settings.update(
        model_path=tiny_checkpoints["policy"],
        image_size=(56, 56),
        max_new_tokens=4,
        num_iterations=1,  # one AdamW step per rollout batch (the recipe takes 2)
        sam_model_type="vit_tiny",
        sam_cache_size=0,
        rewards=[DigitShareReward()],  # the recipe's SAM rewards are all 0 on a random tiny policy
        **overrides,
    )
    return GRPOModule(**settings), recipe["trainer"]


def test_the_7b_recipe_keeps_float32_master_weights(tiny_checkpoints):
    module, trainer = recipe_module(tiny_checkpoints)
    assert trainer["precision"] == "32-true"
    assert trainer["strategy"]["class_path"] == "samr1.strategies.FSDP2Strategy"
    assert module.hparams.learning_rate == 1e-6
    assert (module.hparams.param_dtype, module.hparams.compute_dtype) == ("float32", "bfloat16")
    assert precision_warnings("float32", "bfloat16", trainer["precision"]) == []


@pytest.mark.parametrize("sharded", [True, False], ids=["fsdp2", "autocast"])
def test_one_step_at_lr_1e6_changes_every_trainable_decoder_weight(tiny_checkpoints, tmp_path, sharded):
    from samr1.strategies import FSDP2Strategy

    module, _ = recipe_module(tiny_checkpoints)
    strategy = FSDP2Strategy() if sharded else "auto"  # the recipe's FSDP2, or autocast bf16 without sharding
    changed = one_step_changes(module, tmp_path, strategy=strategy, precision="32-true")
    assert all(p.dtype == torch.float32 for p in module.policy.parameters())
    norms = [k for k in changed if "norm" in k]
    assert len(norms) == 5 and all(changed[k][0] == changed[k][1] for k in norms)  # every RMSNorm gain
    moved, total = (sum(c[i] for c in changed.values()) for i in (0, 1))
    assert moved / total > 0.998  # essentially every weight (a few gradients are exactly 0 in bf16)
    assert all(n / size > 0.95 for n, size in changed.values())


def test_bf16_master_weights_round_small_updates_away_and_warn(tiny_checkpoints, tmp_path):
    module, _ = recipe_module(tiny_checkpoints, param_dtype="bfloat16")
    with pytest.warns(UserWarning, match="model.param_dtype=bfloat16 .*small learning rates round away"):
        changed = one_step_changes(module, tmp_path)
    moved, total = (sum(c[i] for c in changed.values()) for i in (0, 1))
    assert moved / total < 0.1  # about 2% of the weights move; the rest of the update rounds to nothing
    assert all(changed[k][0] == 0 for k in changed if "norm" in k)  # a gain of 1.0 never moves by 1e-6
