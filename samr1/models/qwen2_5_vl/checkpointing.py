"""Activation checkpointing that keeps the shared-prefix KV cache (prefix_cache.py) in the update.

Hugging Face's own decoder-layer checkpointing (`gradient_checkpointing_enable`) drops the cache: a recomputed
layer would append its keys/values to the cache a second time, so transformers sets `cache=None` and the layer
attends only to the tokens it is given. samr1 feeds the completion tokens after a shared prefill, so with that
checkpointing the update's log-probs were computed without the prompt (KL 4.04 at the first step of the tiny
model instead of 0).

Here each decoder layer checkpoints itself, with the cache as data instead of state: the checkpointed function
takes the layer's cached keys/values (the prompt's, with their autograd history) as inputs, attends over them
plus the new tokens through a throw-away one-layer cache, and returns the new tokens' keys/values, which are
appended to the real cache outside the checkpoint. A recomputation in the backward pass rebuilds the throw-away
cache from the same inputs, so nothing is appended twice, and gradients reach the prefill through the cached
keys/values exactly as without checkpointing (tests/unit/models/test_checkpointing.py).
The vision tower, which has no cache, keeps Hugging Face's checkpointing of its blocks.
"""

from __future__ import annotations

import types

import torch
from torch.utils.checkpoint import checkpoint

from samr1.models.qwen2_5_vl.prefix_cache import model_parts


class _OneLayerCache:
    """The cache interface a Qwen2.5-VL attention layer uses (`update`), over one layer's past keys/values.

    Remembers the new keys/values it was given, so the checkpointed function can return them.
    """

    def __init__(self, keys: torch.Tensor | None, values: torch.Tensor | None) -> None:
        self.past = (keys, values)
        self.new: tuple[torch.Tensor, torch.Tensor] | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        self.new = (key_states, value_states)
        keys, values = self.past
        if keys is None:
            return key_states, value_states
        return torch.cat([keys, key_states], dim=-2), torch.cat([values, value_states], dim=-2)


_HF_CHECKPOINTING = (
    "the decoder layers use Hugging Face's gradient checkpointing, which drops the shared-prefix KV cache (the "
    "update would compute log-probs without the prompt); samr1 checkpoints the decoder itself: use "
    "samr1.models.qwen2_5_vl.checkpointing.enable_activation_checkpointing instead of "
    "gradient_checkpointing_enable() on the whole model"
)


def _cached(cache, layer_idx: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The keys/values `cache` holds for `layer_idx` ((None, None) when it holds none yet)."""
    layers = getattr(cache, "layers", None)
    if cache is None or layers is None or layer_idx >= len(layers):
        return None, None
    layer = layers[layer_idx]
    if not getattr(layer, "is_initialized", False) or layer.keys is None or layer.keys.numel() == 0:
        return None, None
    return layer.keys, layer.values


def _checkpointed_forward(layer_forward, layer_idx: int):
    """A decoder layer's `forward` that checkpoints itself when it runs under autograd in training mode."""

    def forward(self, hidden_states, *args, cache=None, **kwargs):
        if not (self.training and torch.is_grad_enabled()):
            return layer_forward(hidden_states, *args, cache=cache, **kwargs)
        if self.gradient_checkpointing:
            raise RuntimeError(_HF_CHECKPOINTING)
        past_keys, past_values = _cached(cache, layer_idx)

        def run(hidden, keys, values):
            local = _OneLayerCache(keys, values) if cache is not None else None
            out = layer_forward(hidden, *args, cache=local, **kwargs)
            if local is None:
                return out, None, None
            new_keys, new_values = local.new
            return out, new_keys, new_values

        out, new_keys, new_values = checkpoint(
            run, hidden_states, past_keys, past_values, use_reentrant=False
        )
        if cache is not None:
            cache.update(new_keys, new_values, layer_idx)  # the same append the layer makes uncheckpointed
        return out

    return forward


def enable_activation_checkpointing(model) -> None:
    """Checkpoint every decoder layer (cache-preserving, see above) and every vision block of `model`.

    Works on a plain or PEFT-wrapped Qwen2.5-VL model, before or after LoRA, and before FSDP2 sharding: the
    checkpoint lives inside each layer's `forward`, so module hooks (FSDP2's gathers) stay outside it and run once.
    Idempotent.
    """
    visual, decoder, _ = model_parts(model)
    for idx, layer in enumerate(decoder.layers):
        if getattr(layer, "_samr1_checkpointed", False):
            continue
        if getattr(layer, "gradient_checkpointing", False):
            raise ValueError(_HF_CHECKPOINTING)
        layer_idx = getattr(layer.self_attn, "layer_idx", idx)
        layer.forward = types.MethodType(_checkpointed_forward(layer.forward, layer_idx), layer)
        layer._samr1_checkpointed = True
    enable = getattr(visual, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:  # transformers before activation_checkpointing_enable
        visual.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def uses_activation_checkpointing(model) -> bool:
    """Whether `enable_activation_checkpointing` was applied to `model`'s decoder."""
    _, decoder, _ = model_parts(model)
    return all(getattr(layer, "_samr1_checkpointed", False) for layer in decoder.layers)
