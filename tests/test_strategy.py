"""Strategies: sharding on a CPU fails at start with what to use instead."""

from __future__ import annotations

import lightning as L
import pytest

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
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
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
