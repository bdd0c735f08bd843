"""Shared-prefix attention: a prompt's KV cache is stored once and its G completions attend to that one copy.

`DecodeState.select` (prefix_cache.py) copies a prompt's cache to each of its G rows, and every decode step
then reads G copies of a ~1,000-token image prompt. Here each decoder layer's attention is split in two:
the queries of all rows of a prompt attend to the prompt's keys together (one matrix product per prompt, no
copy), each row's queries attend to its own tokens (causally), and the two partial softmaxes are merged
exactly by their log-sum-exp. The same path serves decoding (no grad; the rows' own tokens in a small cache),
the log-prob passes and the update (all completion tokens at once; gradients reach the shared prefix).

The attention runs through transformers' attention interface: the text config's `_attn_implementation` is
switched to a registered dispatcher that handles a `SharedPrefix` passed as the attention mask and hands
every other call (prefill, plain forwards) to the original implementation unchanged.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from samr1.models.qwen2_5_vl.prefix_cache import DecodeState, cache_kwarg, cache_layers, model_parts

NAME = "samr1_shared_prefix:"  # + the wrapped implementation
SUPPORTED = ("sdpa", "eager")  # the dispatcher keeps every other call on these unchanged


@dataclass
class SharedPrefix:
    """The prompts' KV caches, once per prompt, and which prompt each row continues.

    Passed to the decoder as its attention mask; `slot[i]` is row i's rank among its prompt's rows.
    """

    layers: list[tuple[torch.Tensor, torch.Tensor]]  # per decoder layer: keys, values [P, Hkv, Lp, D]
    prefix_mask: torch.Tensor  # [P, Lp] bool: real (not padding) prompt positions
    rows: torch.Tensor  # [N] prompt of each row
    slot: torch.Tensor  # [N]
    slots: int  # most rows of one prompt
    regular: bool  # rows == arange(P).repeat_interleave(slots): grouping is a reshape
    # [1]: the rows' own keys past this many are not written yet (fixed-shape stores, static_decode.py);
    # None: the own keys end with the queries.
    suffix_end: torch.Tensor | None = None
    # Decoding (one query per row, no grad): on CPU both parts run through the fused flash-attention kernel,
    # which returns their log-sum-exps. Off for the log-prob passes, so old log-probs keep the numerics of
    # the training forward.
    fused: bool = False
    prefix_bias: torch.Tensor | None = None  # [P, 1, 1, Lp] additive mask of the padding; None: no padding

    @classmethod
    def of(cls, layers, prefix_mask: torch.Tensor, rows: torch.Tensor) -> SharedPrefix:
        prompts = prefix_mask.shape[0]
        counts = torch.bincount(rows, minlength=prompts)
        slots = int(counts.max().item()) if rows.numel() else 0
        # Rank of each row among the rows of its prompt, in row order.
        same = rows.unsqueeze(0) == rows.unsqueeze(1)
        slot = torch.tril(same.long(), diagonal=-1).sum(dim=1)
        regular = bool(
            (counts == slots).all().item()
            and torch.equal(rows, torch.arange(prompts, device=rows.device).repeat_interleave(slots))
        )
        mask = prefix_mask.bool()
        bias = None
        if not bool(mask.all()):
            dtype = layers[0][0].dtype if len(layers) else torch.float32
            bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))
            bias = bias[:, None, None, :]
        return cls(list(layers), mask, rows, slot, slots, regular, prefix_bias=bias)


@dataclass
class SharedDecodeState:
    """Rows continuing shared prompts: the prefix, the rows' own tokens so far, next positions and states."""

    prefix: SharedPrefix
    cache: DynamicCache | None  # the rows' own keys/values (decoding); None: each feed is self-contained
    next_position: torch.Tensor  # [N]
    last_hidden: torch.Tensor  # [N, hidden]

    def select(self, keep: torch.Tensor) -> SharedDecodeState:
        """The rows `keep` (indices, no repeats) of a decoding state: finished rows leave the batch. Their
        own tokens are copied (small); a prompt none of whose rows is kept leaves the prefix."""
        prompts, rows = torch.unique(self.prefix.rows.index_select(0, keep), return_inverse=True)
        layers = self.prefix.layers
        if prompts.numel() < self.prefix.prefix_mask.shape[0]:
            layers = [(k.index_select(0, prompts), v.index_select(0, prompts)) for k, v in layers]
        prefix = SharedPrefix.of(layers, self.prefix.prefix_mask.index_select(0, prompts), rows)
        prefix.fused = self.prefix.fused
        cache = None
        if self.cache is not None:
            cache = DynamicCache()
            cache.layers = [layer.select(keep) for layer in self.cache.layers]
        return SharedDecodeState(
            prefix, cache, self.next_position.index_select(0, keep), self.last_hidden.index_select(0, keep)
        )


def share_prefix(
    model, state: DecodeState, rows: torch.Tensor, reserve: int | None = None
) -> SharedDecodeState:
    """Rows `rows` (prompt indices of `state`, repeats allowed) continuing `state`'s prompts without copying
    their caches. `reserve`: decode up to that many tokens, storing the rows' own keys in place; None: one
    `feed_shared` of all tokens (log-probs, update)."""
    enable_shared_prefix(model)
    prefix = SharedPrefix.of(cache_layers(state.cache), state.attention_mask, rows)
    cache = None
    if reserve is not None:
        prefix.fused = True
        cache = DynamicCache()
        cache.layers = [SuffixLayer(reserve) for _ in prefix.layers]
    return SharedDecodeState(
        prefix, cache, state.next_position.index_select(0, rows), state.last_hidden.index_select(0, rows)
    )


def feed_shared(model, state: SharedDecodeState, tokens: torch.Tensor) -> torch.Tensor:
    """Append `tokens` [N, T] to the rows of `state`; returns their hidden states [N, T, hidden]."""
    _, decoder, _ = model_parts(model)
    n, t = tokens.shape
    offsets = torch.arange(t, device=tokens.device)
    positions = (state.next_position.unsqueeze(1) + offsets).unsqueeze(0).expand(3, n, t)
    masks = prefix_masks(decoder, state.prefix)
    extra = {cache_kwarg(decoder): state.cache} if state.cache is not None else {}
    out = decoder(
        input_ids=tokens,
        attention_mask=masks,
        position_ids=positions,
        use_cache=state.cache is not None,
        **extra,
    )
    state.next_position = state.next_position + t
    state.last_hidden = out.last_hidden_state[:, -1]
    return out.last_hidden_state


def prefix_masks(decoder, prefix: SharedPrefix) -> dict[str, SharedPrefix]:
    """The decoder's attention masks for rows on `prefix`: a dict (one entry per layer type) skips
    transformers' mask construction, since the shared-prefix attention masks by itself."""
    return {kind: prefix for kind in set(getattr(decoder.config, "layer_types", ["full_attention"]))}


def shared_prefix_supported(model, state: DecodeState) -> bool:
    """Whether rows can continue `state` on the shared-prefix path: sdpa or eager text attention, and a
    prefill cache holding every decoder layer (gradient checkpointing without a cache-keeping layer leaves
    it empty; the copying path then behaves as before)."""
    _, decoder, _ = model_parts(model)
    name = decoder.config._attn_implementation or ""
    supported = name.startswith(NAME) or name in SUPPORTED
    return supported and len(cache_layers(state.cache)) == decoder.config.num_hidden_layers


def enable_shared_prefix(model) -> None:
    """Route the text decoder's attention through the dispatcher (once; other calls are unchanged)."""
    _, decoder, _ = model_parts(model)
    config = decoder.config
    base = config._attn_implementation
    if base.startswith(NAME):
        return
    if base not in SUPPORTED:
        raise ValueError(f"shared-prefix attention wraps {SUPPORTED} attention, not {base!r}")
    name = NAME + base
    if name not in ALL_ATTENTION_FUNCTIONS:
        ALL_ATTENTION_FUNCTIONS.register(name, shared_prefix_attention)
        ALL_MASK_ATTENTION_FUNCTIONS.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base])
    config._attn_implementation = name


def shared_prefix_attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
    """Attention of one decoder layer: shared-prefix attention for a `SharedPrefix` mask, else the wrapped
    implementation. Returns (output [N, T, Hq, D], None) like transformers' attention functions."""
    if not isinstance(attention_mask, SharedPrefix):
        base = module.config._attn_implementation.removeprefix(NAME)
        fn = ALL_ATTENTION_FUNCTIONS.get_interface(base, _eager)
        return fn(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
    if kwargs.get("sliding_window") is not None:
        raise NotImplementedError("shared-prefix attention does not implement sliding-window layers")
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    args = (query, key, value, attention_mask, module.layer_idx, scale)
    if (
        attention_mask.fused
        and query.device.type == "cpu"
        and query.shape[2] == 1
        and not torch.is_grad_enabled()
    ):
        return fused_decode_attention(*args).transpose(1, 2), None
    if torch.is_grad_enabled():
        # The scores are materialised (float32, rows x prompt length): keep them out of the saved activations
        # and recompute them in the backward pass, as fused attention kernels do.
        out = checkpoint(prefix_suffix_attention, *args, use_reentrant=False)
    else:
        out = prefix_suffix_attention(*args)
    return out.transpose(1, 2), None


def prefix_suffix_attention(q, k, v, prefix: SharedPrefix, layer: int, scale: float) -> torch.Tensor:
    """softmax(q [k_prefix; k]^T) [v_prefix; v] for rows q [N, Hq, T, D] whose own keys k, v [N, Hkv, S, D]
    end with their T queries (causal), and whose prompt keys are `prefix.layers[layer]`, shared by the rows
    of a prompt. Returns [N, Hq, T, D]."""
    n, hq, t, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    kp, vp = prefix.layers[layer]
    qg = q.view(n, hkv, hq // hkv, t, d)
    # 1. Queries of a prompt's rows together against its keys, read once.
    qp = _queries_by_prompt(qg, prefix)
    o1, m1, l1 = _partial_softmax(qp, kp, vp, scale, ~prefix.prefix_mask[:, None, None, :])
    o1, m1, l1 = (_back_to_rows(x, prefix, qg.shape) for x in (o1, m1, l1))
    # 2. Each row's queries against its own tokens, causally (query i sits at position end - t + i).
    if prefix.suffix_end is None:
        future = torch.ones(t, s, dtype=torch.bool, device=q.device).triu(diagonal=s - t + 1)
    else:
        at = prefix.suffix_end - t + torch.arange(t, device=q.device)
        future = torch.arange(s, device=q.device).unsqueeze(0) > at.unsqueeze(1)
    o2, m2, l2 = _partial_softmax(qg, k.unsqueeze(2), v.unsqueeze(2), scale, future)
    # 3. One softmax over both parts, merged by their maxima and sums.
    m = torch.maximum(m1, m2)
    a1, a2 = torch.exp(m1 - m), torch.exp(m2 - m)
    out = (o1 * a1 + o2 * a2) / (l1 * a1 + l2 * a2)
    return out.reshape(n, hq, t, d).to(q.dtype)


def fused_decode_attention(q, k, v, prefix: SharedPrefix, layer: int, scale: float) -> torch.Tensor:
    """`prefix_suffix_attention` of one query per row [N, Hq, 1, D] (decoding, no grad) through the CPU flash
    kernel: the rows of a prompt against its keys together, each row against its own keys, merged by the
    two parts' log-sum-exps."""
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    n, hq, _, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    groups = hq // hkv
    kp, vp = prefix.layers[layer]
    # One dtype for the kernel (under CPU autocast the rotated q, k are float32, the values bf16).
    dtype = functools.reduce(torch.promote_types, (x.dtype for x in (q, k, v, kp, vp)))
    out_dtype, (q, k, v, kp, vp) = q.dtype, (x.to(dtype) for x in (q, k, v, kp, vp))
    qg = q.reshape(n, hkv, groups, 1, d)
    bias = None if prefix.prefix_bias is None else prefix.prefix_bias.to(q.dtype)
    o1, lse1 = flash(_queries_by_prompt(qg, prefix), kp, vp, 0.0, False, attn_mask=bias, scale=scale)
    o1 = _back_to_rows(o1, prefix, qg.shape).reshape(n, hkv, groups, d)
    lse1 = _back_to_rows(lse1.unsqueeze(-1), prefix, qg.shape).reshape(n, hkv, groups)
    qg = qg.reshape(n, hkv, groups, d)
    own = None  # one query per row sees all its own keys, up to the written ones of a fixed-shape store
    if prefix.suffix_end is not None:
        written = torch.arange(s, device=q.device) < prefix.suffix_end
        own = torch.zeros(1, 1, 1, s, dtype=q.dtype, device=q.device).masked_fill(~written, float("-inf"))
    o2, lse2 = flash(qg, k, v, 0.0, False, attn_mask=own, scale=scale)
    lse = torch.logaddexp(lse1, lse2)
    out = o1.float() * torch.exp(lse1 - lse).unsqueeze(-1) + o2.float() * torch.exp(lse2 - lse).unsqueeze(-1)
    return out.reshape(n, hq, 1, d).to(out_dtype)


def _queries_by_prompt(qg: torch.Tensor, prefix: SharedPrefix) -> torch.Tensor:
    """Rows' queries [N, Hkv, groups, T, D] gathered per prompt: [P, Hkv, slots * groups * T, D] (a reshape
    when every prompt has `slots` consecutive rows; else zero queries fill the missing slots)."""
    n, hkv, groups, t, d = qg.shape
    p, c = prefix.prefix_mask.shape[0], prefix.slots
    if prefix.regular:
        qp = qg.view(p, c, hkv, groups, t, d)
    else:
        qp = qg.new_zeros(p, c, hkv, groups, t, d).index_put((prefix.rows, prefix.slot), qg)
    return qp.transpose(1, 2).reshape(p, hkv, c * groups * t, d)


def _back_to_rows(x: torch.Tensor, prefix: SharedPrefix, row_shape: torch.Size) -> torch.Tensor:
    """The inverse of `_queries_by_prompt` for per-query results [P, Hkv, slots * groups * T, X]:
    [N, Hkv, groups, T, X]."""
    n, hkv, groups, t, _ = row_shape
    p, c = prefix.prefix_mask.shape[0], prefix.slots
    x = x.reshape(p, hkv, c, groups, t, -1).transpose(1, 2)
    return x.reshape(n, hkv, groups, t, -1) if prefix.regular else x[prefix.rows, prefix.slot]


def _partial_softmax(q, k, v, scale: float, masked: torch.Tensor):
    """Unnormalised attention: (exp(s - max) @ v, max, sum of exp) over the keys k, with s = q k^T * scale
    and `masked` positions excluded. The max is a constant of the result, so it is detached.

    The scores are float32 products of the (bf16) queries and keys, as fused attention kernels accumulate
    them: rounded to bf16 first, a logit near 8 is off by up to 0.03 (3% in its weight), and gradients that
    nearly cancel over a group's rows (advantages sum to 0) lose their last digits (a one-step update then
    left an RMSNorm gain element with an exactly-zero gradient under bf16 compute)."""
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    scores = scores.masked_fill(masked, float("-inf"))
    top = scores.amax(dim=-1, keepdim=True).detach()
    weights = torch.exp(scores - top)
    total = weights.sum(dim=-1, keepdim=True)
    out = torch.matmul(weights.to(v.dtype), v).float()
    return out, top, total


class SuffixLayer(DynamicLayer):
    """A cache layer of the rows' own tokens with room for `reserve` positions, written in place (no grad).

    Under autograd, or past `reserve`, it becomes a plain (concatenating) `DynamicLayer` for good."""

    def __init__(self, reserve: int) -> None:
        super().__init__()
        self.reserve = reserve
        self._keys = self._values = None
        self._length = 0
        self._plain = False

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        end = self._length + key_states.shape[-2]
        if self._plain or torch.is_grad_enabled() or end > self.reserve:
            if not self._plain and self._keys is not None:  # continue from the tokens stored so far
                self.keys, self.values = self._keys[:, :, : self._length], self._values[:, :, : self._length]
            self._keys = self._values = None
            self._plain = True
            return super().update(key_states, value_states, *args, **kwargs)
        if self._keys is None:
            n, heads, _, dim = key_states.shape
            self._keys = key_states.new_empty(n, heads, self.reserve, dim)
            self._values = value_states.new_empty(
                n, value_states.shape[1], self.reserve, value_states.shape[-1]
            )
            self.device, self.dtype, self.is_initialized = key_states.device, key_states.dtype, True
        self._keys[:, :, self._length : end] = key_states
        self._values[:, :, self._length : end] = value_states
        self._length = end
        self.keys, self.values = self._keys[:, :, :end], self._values[:, :, :end]
        return self.keys, self.values

    def select(self, keep: torch.Tensor) -> SuffixLayer:
        """A layer holding the rows `keep` of this one, with the same room (the kept rows' tokens copied)."""
        layer = SuffixLayer(self.reserve)
        layer._length, layer._plain = self._length, self._plain
        if self._keys is not None:
            layer._keys, layer._values = self._keys.index_select(0, keep), self._values.index_select(0, keep)
            layer.keys, layer.values = layer._keys[:, :, : self._length], layer._values[:, :, : self._length]
        elif self.is_initialized:
            layer.keys, layer.values = self.keys.index_select(0, keep), self.values.index_select(0, keep)
        if self.is_initialized:
            layer.device, layer.dtype, layer.is_initialized = self.device, self.dtype, True
        return layer


def _eager(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import eager_attention_forward

    return eager_attention_forward(
        module, query, key, value, attention_mask, scaling=scaling, dropout=dropout
    )
