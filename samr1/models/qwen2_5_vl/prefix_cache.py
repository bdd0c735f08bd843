"""The policy's forward pieces, so a prompt is encoded once and its completions continue from its KV cache.

A GRPO step sees each prompt (mostly image tokens) with G completions. Instead of running image + prompt G
times, we (1) run the vision tower once per image, (2) prefill each prompt once, (3) copy its KV cache to its
completions, and (4) run only the completion tokens. Gradients flow through the copied cache into the prefill,
so the same path serves generation (no grad) and the update (with grad).
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from samr1.modules.prompting import PromptBatch


def unwrap(model):
    """The Qwen2.5-VL `ForConditionalGeneration` inside a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def model_parts(model) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    """(vision tower, text decoder, lm_head) of a Qwen2.5-VL model, also when wrapped by PEFT."""
    base = unwrap(model)
    inner = base.model
    return inner.visual, inner.language_model, base.lm_head


def cache_kwarg(decoder: torch.nn.Module) -> str:
    """The name of the decoder's cache argument: transformers 5 renamed `past_key_values` to `cache`."""
    return _cache_kwarg_of(type(decoder))


@functools.cache
def _cache_kwarg_of(decoder_class: type) -> str:  # read once per class: feeds run at every decoded token
    params = inspect.signature(decoder_class.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def cache_layers(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache))


def make_cache(layers: list[tuple[torch.Tensor, torch.Tensor]], reserve: int = 0) -> DynamicCache:
    """A cache holding `layers`; `reserve` > 0 leaves room to append that many positions without copying."""
    cache = DynamicCache()
    if reserve > 0:
        cache.layers = [ReservedLayer(k, v, reserve) for k, v in layers]
        return cache
    for i, (k, v) in enumerate(layers):
        cache.update(k, v, i)
    return cache


class ReservedLayer(DynamicLayer):
    """A `DynamicLayer` whose storage has room for `reserve` more positions.

    `DynamicLayer` concatenates on every update, copying the whole cache (G copies of a ~1,000-token image
    prompt) for each decoded token: quadratic in the completion length. Here a token is written in place and the
    layer's keys/values are views of the filled part. Without gradients only: under autograd, or once the room
    is used up, it falls back to concatenation.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, reserve: int) -> None:
        super().__init__()
        n, heads, length = keys.shape[:3]
        self._keys = keys.new_empty(n, heads, length + reserve, keys.shape[-1])
        self._values = values.new_empty(n, values.shape[1], length + reserve, values.shape[-1])
        self._keys[:, :, :length] = keys
        self._values[:, :, :length] = values
        self._length = length
        self.keys, self.values = self._keys[:, :, :length], self._values[:, :, :length]
        self.device, self.is_initialized = keys.device, True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        end = self._length + key_states.shape[-2]
        if self._keys is None or end > self._keys.shape[-2] or torch.is_grad_enabled():
            self._keys = self._values = None  # from now on a plain DynamicLayer
            return super().update(key_states, value_states, *args, **kwargs)
        self._keys[:, :, self._length : end] = key_states
        self._values[:, :, self._length : end] = value_states
        self._length = end
        self.keys, self.values = self._keys[:, :, :end], self._values[:, :, :end]
        return self.keys, self.values


def image_features(model, batch: PromptBatch, prompts: list[int] | None = None) -> list[torch.Tensor]:
    """Vision tower outputs, one tensor [tokens, hidden] per prompt (its images concatenated)."""
    visual, _, _ = model_parts(model)
    prompts = list(range(len(batch))) if prompts is None else prompts
    image_ids = batch.image_indices(prompts)
    pixels = batch.image_pixels(image_ids)
    grid = batch.image_grid_thw[image_ids]
    out = visual(pixels.to(visual.dtype), grid_thw=grid)
    feats = out.pooler_output if hasattr(out, "pooler_output") else out
    tokens = (grid.prod(-1) // visual.spatial_merge_size**2).tolist()
    per_image = torch.split(feats, tokens)
    result, k = [], 0
    for p in prompts:
        n = batch.images_per_prompt[p]
        result.append(torch.cat(per_image[k : k + n]))
        k += n
    return result


def rope_positions(model, input_ids, attention_mask, image_grid_thw) -> torch.Tensor:
    """Qwen2.5-VL's 3-D rotary positions [3, B, L] for left-padded prompts with images."""
    base = unwrap(model)
    mm = base.model
    kwargs = dict(image_grid_thw=image_grid_thw, attention_mask=attention_mask)
    if "mm_token_type_ids" in inspect.signature(mm.get_rope_index).parameters:
        image_token = base.config.image_token_id
        kwargs["mm_token_type_ids"] = (input_ids == image_token).long()
    positions, _ = mm.get_rope_index(input_ids, **kwargs)
    return positions


@dataclass
class DecodeState:
    """A KV cache with the attention mask and next rotary position of each row; grows as tokens are fed."""

    cache: DynamicCache
    attention_mask: torch.Tensor  # [n, L]
    next_position: torch.Tensor  # [n]
    last_hidden: torch.Tensor  # [n, hidden]: the state that predicts the next token

    def select(self, rows: torch.Tensor, reserve: int = 0) -> DecodeState:
        """A new state holding `rows` (repeats allowed); differentiable through the cache.

        `reserve`: room for that many more positions, so decoding them (without gradients) copies nothing.
        """
        layers = [(k.index_select(0, rows), v.index_select(0, rows)) for k, v in cache_layers(self.cache)]
        return DecodeState(
            cache=make_cache(layers, reserve),
            attention_mask=self.attention_mask.index_select(0, rows),
            next_position=self.next_position.index_select(0, rows),
            last_hidden=self.last_hidden.index_select(0, rows),
        )


def prefill(model, batch: PromptBatch, prompts: list[int] | None = None, features=None) -> DecodeState:
    """Run the prompts `prompts` (default all) once; `features` reuses precomputed `image_features`."""
    _, decoder, _ = model_parts(model)
    prompts = list(range(len(batch))) if prompts is None else prompts
    rows = torch.as_tensor(prompts, device=batch.input_ids.device)
    input_ids = batch.input_ids.index_select(0, rows)
    attention_mask = batch.attention_mask.index_select(0, rows)
    if features is None:
        features = image_features(model, batch, prompts)
    else:
        features = [features[p] for p in prompts]
    embed = decoder.get_input_embeddings()
    embeds = embed(input_ids)
    image_mask = (input_ids == _image_token_id(model)).unsqueeze(-1)
    embeds = embeds.masked_scatter(image_mask, torch.cat(features).to(embeds.dtype))
    positions = rope_positions(
        model, input_ids, attention_mask, batch.image_grid_thw[batch.image_indices(prompts)]
    )
    out = decoder(
        inputs_embeds=embeds,
        attention_mask=attention_mask,
        position_ids=positions,
        use_cache=True,
        **{cache_kwarg(decoder): DynamicCache()},
    )
    cache = out.cache if hasattr(out, "cache") else out.past_key_values
    valid = attention_mask.bool()
    next_position = positions.masked_fill(~valid.unsqueeze(0), -1).amax(dim=(0, 2)) + 1
    return DecodeState(cache, attention_mask, next_position, out.last_hidden_state[:, -1])


def feed(model, state: DecodeState, tokens: torch.Tensor) -> torch.Tensor:
    """Append `tokens` [n, T] to `state` (in place); returns their hidden states [n, T, hidden]."""
    _, decoder, _ = model_parts(model)
    n, t = tokens.shape
    offsets = torch.arange(t, device=tokens.device)
    positions = (state.next_position.unsqueeze(1) + offsets).unsqueeze(0).expand(3, n, t)
    mask = torch.cat([state.attention_mask, state.attention_mask.new_ones(n, t)], dim=1)
    out = decoder(
        input_ids=tokens,
        attention_mask=mask,
        position_ids=positions,
        use_cache=True,
        **{cache_kwarg(decoder): state.cache},
    )
    state.attention_mask = mask
    state.next_position = state.next_position + t
    state.last_hidden = out.last_hidden_state[:, -1]
    return out.last_hidden_state


def _image_token_id(model) -> int:
    base = unwrap(model)
    return base.config.image_token_id
