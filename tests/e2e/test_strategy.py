"""Strategies: FSDP2 runs on one CPU process too; what cannot work fails at start saying what to use."""

from __future__ import annotations

from types import SimpleNamespace

import lightning as L
import pytest
import torch

from samr1.datamodules import SyntheticShapesDataModule
from samr1.models.qwen2_5_vl.sharding import check_strategy, is_sharded
from samr1.modules.module import GRPOModule
from samr1.strategies import FSDP2Strategy


def _fit(module: GRPOModule, tmp_path, **trainer) -> L.Trainer:
    trainer = L.Trainer(
        max_steps=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        **trainer,
    )
    data = SyntheticShapesDataModule(num_train=4, image_size=56, val_split=None, test_split=None)
    trainer.fit(module, datamodule=data)
    return trainer


def test_fsdp2_fit_runs_in_one_cpu_process(tiny_checkpoints, tmp_path):
    # World size 1: the same sharded code path as on 8 GPUs (units, explicit root, sharded reference).
    module = GRPOModule(
        model_path=tiny_checkpoints["policy"],
        image_size=(56, 56),
        group_size=2,
        max_new_tokens=6,
        kl_coef=0.01,
    )
    trainer = _fit(module, tmp_path, accelerator="cpu", devices=1, strategy=FSDP2Strategy())
    assert trainer.global_step == 2
    assert is_sharded(module.policy) and is_sharded(module._frozen["reference"].model)
    assert all(type(p).__name__ == "DTensor" and p.dtype == torch.float32 for p in module.policy.parameters())


def test_fsdp1_is_refused_naming_fsdp2():
    from lightning.pytorch.strategies import FSDPStrategy

    with pytest.raises(ValueError, match="configs/strategy/fsdp.yaml.*fsdp_cpu.yaml"):
        check_strategy(SimpleNamespace(strategy=FSDPStrategy()))


def test_tensor_parallelism_is_refused_naming_fsdp2strategy():
    from lightning.pytorch.strategies import ModelParallelStrategy

    class Mesh:  # the mesh ModelParallelStrategy(tensor_parallel_size=2) builds on 2 processes
        mesh_dim_names = ("data_parallel", "tensor_parallel")

        def __getitem__(self, name):
            return SimpleNamespace(size=lambda: {"data_parallel": 1, "tensor_parallel": 2}[name])

    strategy = ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=2)
    strategy._device_mesh = Mesh()
    with pytest.raises(ValueError, match="FSDP2Strategy"):
        check_strategy(SimpleNamespace(strategy=strategy))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fsdp2_bf16_compute_fit_runs_on_gpu(tiny_checkpoints, tmp_path):
    module = GRPOModule(
        model_path=tiny_checkpoints["policy"],
        image_size=(56, 56),
        group_size=4,
        max_new_tokens=16,
        kl_coef=0.01,
        compute_dtype="bfloat16",
        gradient_checkpointing=True,
    )
    trainer = _fit(module, tmp_path, accelerator="gpu", devices=1, strategy=FSDP2Strategy())
    assert trainer.global_step == 2
    assert all(p.dtype == torch.float32 for p in module.policy.parameters())


def test_out_of_memory_names_phase_batch_and_what_to_lower():
    from samr1.modules.policy import out_of_memory_hint

    with pytest.raises(torch.OutOfMemoryError, match=r"generation with 2 prompts x G=8.*max_new_tokens"):
        with out_of_memory_hint("generation", 2, 8, "max_new_tokens or data.batch_size"):
            raise torch.OutOfMemoryError("CUDA out of memory")
