"""Multi-GPU sharding of the policy with FSDP2 (`fully_shard`), applied under Lightning's ModelParallelStrategy.

Why FSDP2 and not Lightning's FSDPStrategy (FSDP1): samr1 calls the policy's pieces directly (vision tower,
decoder, lm_head) to prefill a prompt once and continue its G completions from the cache (forward.py).
FSDP1 gathers a unit's parameters only inside that unit's own `forward`, so the root unit (embeddings,
lm_head) would stay sharded when called this way. FSDP2 puts hooks on every module it shards: each vision
block, each decoder layer, the decoder itself (embeddings, norm), the vision tower (patch embedding, merger)
and lm_head gather their parameters whenever they run, which is what generation needs.
"""

from __future__ import annotations

import torch

from samr1.dtypes import resolve_dtype
from samr1.models.qwen2_5_vl.prefix_cache import unwrap


def check_strategy(trainer) -> None:
    """Fail at start when the strategy cannot run on the chosen accelerator, saying what to use instead."""
    from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

    strategy = trainer.strategy
    if isinstance(strategy, FSDPStrategy | ModelParallelStrategy) and strategy.root_device.type != "cuda":
        raise ValueError(
            f"{type(strategy).__name__} shards the policy across GPUs and needs CUDA devices, but the trainer runs "
            f"on {strategy.root_device.type}. On CPU use `--trainer.strategy ddp` (configs/strategy/ddp_cpu.yaml); "
            "on GPUs use configs/strategy/fsdp.yaml with `--trainer.accelerator gpu`."
        )


def shard_policy(model, device_mesh, dtype: str = "bfloat16", activation_checkpointing: bool = True):
    """Shard a Qwen2.5-VL model in place: vision blocks and decoder layers are the wrap units.

    Parameters are kept in float32 and computed in `dtype` (mixed precision); gradients reduce in float32.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    base = unwrap(model)
    mesh = (
        device_mesh["data_parallel"] if "data_parallel" in (device_mesh.mesh_dim_names or ()) else device_mesh
    )
    policy = MixedPrecisionPolicy(param_dtype=resolve_dtype(dtype), reduce_dtype=torch.float32)
    if activation_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    units = [*base.model.visual.blocks, *base.model.language_model.layers]
    for unit in units:
        fully_shard(unit, mesh=mesh, mp_policy=policy)
    for module in (base.model.visual, base.model.language_model, base.lm_head):
        fully_shard(module, mesh=mesh, mp_policy=policy)
    fully_shard(base, mesh=mesh, mp_policy=policy)
    return model
