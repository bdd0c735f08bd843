"""Strategies: sharding on a CPU fails at start with what to use instead."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from samr1.datamodules import SyntheticShapesDataModule
from samr1.modules.policy import GRPOModule


def test_model_parallel_on_cpu_names_the_alternative(tiny_checkpoints, tmp_path):
    module = GRPOModule(model_path=tiny_checkpoints["policy"], image_size=(56, 56), group_size=2)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        strategy=L.pytorch.strategies.ModelParallelStrategy(),
        logger=False,
        default_root_dir=tmp_path,
    )
    with pytest.raises(ValueError, match="trainer.strategy ddp"):
        trainer.fit(module, datamodule=SyntheticShapesDataModule(num_train=4, image_size=56))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fsdp2_fit_runs_on_gpu(tiny_checkpoints, tmp_path):
    module = GRPOModule(
        model_path=tiny_checkpoints["policy"],
        image_size=(56, 56),
        group_size=4,
        max_new_tokens=16,
        kl_coef=0.01,
    )
    trainer = L.Trainer(
        accelerator="gpu",
        devices=1,
        strategy=L.pytorch.strategies.ModelParallelStrategy(),
        max_steps=2,
        logger=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=SyntheticShapesDataModule(num_train=8, image_size=56, val_split=None))
    assert trainer.global_step == 2


def test_out_of_memory_names_phase_batch_and_what_to_lower():
    from samr1.modules.policy import out_of_memory_hint

    with pytest.raises(torch.OutOfMemoryError, match=r"generation with 2 prompts x G=8.*max_new_tokens"):
        with out_of_memory_hint("generation", 2, 8, "max_new_tokens or data.batch_size"):
            raise torch.OutOfMemoryError("CUDA out of memory")
