"""Sharding the policy (and the reference) with FSDP2 (`fully_shard`) under Lightning's ModelParallelStrategy.

samr1 calls the model's pieces directly (vision tower, token embedding, decoder, decoder layers, lm_head) to
prefill a prompt once and continue its G completions from the KV cache (prefix_cache.py); it never runs the
model's own `forward`. FSDP1 (Lightning's FSDPStrategy) gathers a unit's parameters only inside that unit's
`forward`, so it cannot serve this. FSDP2 hooks every module it shards, so every piece samr1 calls is made a
unit of its own and gathers its weights whenever it runs:
- each vision block and each decoder layer;
- the token embedding (called before the decoder, to scatter image features into the prompt);
- lm_head; when it is tied to the embedding (Qwen2.5-VL-3B: `tie_word_embeddings`), embedding and lm_head
  form ONE unit (`fully_shard([embed_tokens, lm_head])`), so the shared weight is sharded once and stays
  tied: gradients from both uses add up in one parameter and export writes a tied model again;
- the vision tower (patch embedding, merger) and the decoder (final norm);
- the model itself as the root, initialised explicitly: FSDP2 picks as root the first unit whose forward
  runs, and samr1 never runs the model's forward, so without it an inner unit would be taken for the root.

Weights are stored in float32 (master weights, AdamW state), all-gathered in the compute dtype and gradients
reduced in float32 (MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=float32)).

Generation decodes one token at a time; gathering each unit per token would all-gather the decoder for every
generated token (at 7B on 8 GPUs, 7/8 of 15.2 GB per token per GPU). `gathered_weights` gathers every unit
once for the whole rollout and frees the gathered copy afterwards. Memory cost: during generation each GPU
holds the decoder and lm_head in the compute dtype (2 bytes per parameter: 15.2 GB for Qwen2.5-VL-7B, 6.2 GB
for 3B) on top of its shards; the vision tower stays sharded when its features were computed already.
"""

from __future__ import annotations

import contextlib
import functools

import torch

from samr1.dtypes import resolve_dtype
from samr1.models.qwen2_5_vl.checkpointing import enable_activation_checkpointing
from samr1.models.qwen2_5_vl.prefix_cache import unwrap


def check_strategy(trainer) -> None:
    """Fail at start when the strategy cannot run samr1's policy, saying what to use instead."""
    from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

    strategy = trainer.strategy
    if isinstance(strategy, FSDPStrategy):
        raise ValueError(
            "FSDPStrategy (FSDP1) gathers a unit's weights only inside its own forward, but samr1 calls the "
            "policy's embedding, decoder layers and lm_head directly; shard with FSDP2 instead: "
            "`--config configs/strategy/fsdp.yaml` on GPUs, `--config configs/strategy/fsdp_cpu.yaml` on CPUs "
            "(samr1.strategies.FSDP2Strategy)."
        )
    if isinstance(strategy, ModelParallelStrategy):
        mesh = strategy.device_mesh
        names = mesh.mesh_dim_names or ()
        if "tensor_parallel" in names and mesh["tensor_parallel"].size() > 1:
            raise ValueError(
                f"ModelParallelStrategy with tensor_parallel_size={mesh['tensor_parallel'].size()}: samr1 shards the "
                "policy with FSDP2 only (no tensor parallelism); use samr1.strategies.FSDP2Strategy "
                "(configs/strategy/fsdp.yaml), which puts every process in the data-parallel dimension."
            )
        if strategy.root_device.type == "cpu" and strategy.process_group_backend not in (None, "gloo"):
            raise ValueError(
                f"process_group_backend={strategy.process_group_backend!r} cannot run on CPU; use gloo "
                "(configs/strategy/fsdp_cpu.yaml)"
            )


def is_sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(unwrap(model), FSDPModule)


def _data_parallel_mesh(device_mesh):
    names = device_mesh.mesh_dim_names or ()
    return device_mesh["data_parallel"] if "data_parallel" in names else device_mesh


def shard_policy(model, device_mesh, dtype: str = "bfloat16", activation_checkpointing: bool = False):
    """Shard a Qwen2.5-VL model in place (see the module docstring for the units); returns `model`.

    `dtype` is the compute dtype: parameters keep their own dtype (float32 master weights) and are
    all-gathered in `dtype`; gradients reduce in float32. `activation_checkpointing` turns on samr1's
    cache-preserving activation checkpointing (checkpointing.py) before sharding.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    base = unwrap(model)
    mesh = _data_parallel_mesh(device_mesh)
    compute = resolve_dtype(dtype)
    policy = MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=torch.float32)
    if activation_checkpointing:  # samr1's, which keeps the shared-prefix cache (checkpointing.py)
        enable_activation_checkpointing(base)
    visual, decoder = base.model.visual, base.model.language_model
    embed, lm_head = decoder.get_input_embeddings(), base.lm_head

    def shard(module, **kwargs):
        # reshard_after_forward=True everywhere (also the root, where FSDP would otherwise pick False), so
        # `gathered_weights` can restore exactly what it changes.
        fully_shard(module, mesh=mesh, mp_policy=policy, reshard_after_forward=True, **kwargs)

    for unit in [*visual.blocks, *decoder.layers]:
        shard(unit)
    if lm_head.weight is embed.weight:
        shard([embed, lm_head])  # tied: one unit, one sharded parameter
    else:
        shard(embed)
        shard(lm_head)
    shard(visual)
    shard(decoder)
    shard(base)
    # Explicit root: FSDP2 would otherwise make the first unit to run forward the root (samr1 never calls
    # base.forward) and fail on the next one ("FSDP state has already been lazily initialized for
    # embed_tokens"). torch has no public API for this.
    base._get_fsdp_state()._lazy_init()
    return model


def _fsdp_units(model, include_vision: bool = True) -> list:
    from torch.distributed.fsdp import FSDPModule

    base = unwrap(model)
    skip = set(base.model.visual.modules()) if not include_vision else set()
    units, seen = [], set()
    for module in base.modules():
        if isinstance(module, FSDPModule) and module not in skip:
            state = module._get_fsdp_state()
            if id(state) not in seen:  # a grouped unit ([embed, lm_head]) is one state on two modules
                seen.add(id(state))
                units.append(module)
    return units


@contextlib.contextmanager
def gathered_weights(model, include_vision: bool = True):
    """Within this block every sharded unit of `model` stays gathered (one all-gather each), then is freed.

    For generation: without it every decoded token would all-gather every unit again. `include_vision=False`
    leaves the vision tower sharded (its features were computed already). No-op when `model` is not sharded.
    Not for use under autograd (the backward gathers what it needs itself).
    """
    units = _fsdp_units(model, include_vision)
    if not units:
        yield
        return
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
    for unit in units:
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.set_reshard_after_forward(True, recurse=False)
            unit.reshard()


def gathers_weights(generate):
    """Decorator: `generate(model, ..., features=...)` runs inside `gathered_weights(model)`.

    The vision tower stays sharded when `features` (precomputed image features) are passed.
    """

    @functools.wraps(generate)
    def wrapper(model, *args, **kwargs):
        with gathered_weights(model, include_vision=kwargs.get("features") is None):
            return generate(model, *args, **kwargs)

    return wrapper
