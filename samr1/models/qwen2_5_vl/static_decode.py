"""A decode step whose shapes never change, so `torch.compile` captures it once (CUDA graphs on a GPU).

The dynamic path (shared_prefix.py) returns the rows' own keys up to the current length, so every token has
new shapes, and drops finished rows. Here each layer keeps a fixed [N, Hkv, reserve, D] store, a token is
written at a device-side position, and the attention masks the store's unwritten tail; the number of rows is
fixed for the whole rollout (no compaction). Same values as the dynamic path (tested), one graph per rollout
shape instead of one per token.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from samr1.models.qwen2_5_vl.prefix_cache import DecodeState, cache_kwarg, model_parts
from samr1.models.qwen2_5_vl.shared_prefix import SharedPrefix, prefix_masks, share_prefix


class StaticSuffixLayer(DynamicLayer):
    """The rows' own keys and values in fixed-shape storage, written in place at `position` (no grad)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, position: torch.Tensor) -> None:
        super().__init__()
        self.keys, self.values, self.position = keys, values, position
        self.device, self.dtype, self.is_initialized = keys.device, keys.dtype, True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        index = self.position + torch.arange(key_states.shape[-2], device=self.position.device)
        self.keys.index_copy_(2, index, key_states)
        self.values.index_copy_(2, index, value_states)
        return self.keys, self.values


@dataclass
class StaticDecodeState:
    """Fixed-shape decoding state: the shared prefix, the rows' own-token stores, the tokens written so far
    (`position`, [1] on the device) and each row's next rotary position."""

    prefix: SharedPrefix
    cache: DynamicCache
    position: torch.Tensor  # [1] long: own tokens stored so far (the same for every row)
    next_position: torch.Tensor  # [N]
    last_hidden: torch.Tensor  # [N, hidden]


def static_state(model, state: DecodeState, rows: torch.Tensor, reserve: int) -> StaticDecodeState:
    """Rows `rows` continuing `state`'s prompts, with room for `reserve` own tokens each."""
    shared = share_prefix(model, state, rows)
    n = rows.numel()
    position = torch.zeros(1, dtype=torch.long, device=rows.device)
    cache = DynamicCache()
    cache.layers = [
        StaticSuffixLayer(
            k.new_zeros(n, k.shape[1], reserve, k.shape[-1]),
            v.new_zeros(n, v.shape[1], reserve, v.shape[-1]),
            position,
        )
        for k, v in shared.prefix.layers
    ]
    # The matmul form of the attention (not the CPU flash kernel of eager decoding): what the compiler fuses.
    prefix = replace(shared.prefix, suffix_end=position + 1)
    return StaticDecodeState(prefix, cache, position, shared.next_position, shared.last_hidden)


def static_step(model, state: StaticDecodeState, tokens: torch.Tensor) -> torch.Tensor:
    """Hidden states [N, 1, hidden] of one token [N, 1] per row; every shape is the same at every step."""
    _, decoder, _ = model_parts(model)
    n = tokens.shape[0]
    positions = state.next_position.view(1, n, 1).expand(3, n, 1)
    out = decoder(
        input_ids=tokens,
        attention_mask=prefix_masks(decoder, state.prefix),
        position_ids=positions,
        use_cache=True,
        **{cache_kwarg(decoder): state.cache},
    )
    return out.last_hidden_state


def advance_static(model, state: StaticDecodeState, tokens: torch.Tensor, step=static_step) -> torch.Tensor:
    """Feed one token per row through `step` (plain or compiled), then move the positions on (in place)."""
    if tokens.shape[1] != 1:
        raise ValueError(f"the static decode step feeds one token per row, got {tokens.shape[1]}")
    hidden = step(model, state, tokens)
    state.position.add_(1)
    state.prefix.suffix_end.add_(1)
    state.next_position.add_(1)
    state.last_hidden = hidden[:, -1]
    return hidden


@functools.cache
def compiled_static_step():
    """`static_step` through `torch.compile` (shapes fixed: one graph per rollout shape), made once."""
    return torch.compile(static_step, dynamic=False)
