"""Sampling G completions per prompt from one prefill: the prompt's KV cache is shared by its group."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import torch

from samr1.models.qwen2_5_vl.prefix_cache import feed, model_parts, prefill
from samr1.models.qwen2_5_vl.sharding import gathers_weights
from samr1.models.qwen2_5_vl.shared_prefix import (
    SharedDecodeState,
    feed_shared,
    share_prefix,
    shared_prefix_supported,
)
from samr1.models.qwen2_5_vl.static_decode import (
    advance_static,
    compiled_static_step,
    static_state,
    static_step,
)
from samr1.modules.prompting import PromptBatch


@dataclass
class Rollouts:
    """Completions of a prompt batch, in consecutive groups of `group_size` per prompt."""

    completion_ids: torch.Tensor  # [N, T], pad after the end
    completion_mask: torch.Tensor  # [N, T], 1 on completion tokens up to and including EOS
    texts: list[str]
    prompt_index: torch.Tensor  # [N]: which prompt of the batch each completion answers
    truncated: torch.Tensor  # [N] bool: hit max_new_tokens without EOS
    group_size: int

    def __len__(self) -> int:
        return self.completion_ids.shape[0]

    @property
    def lengths(self) -> torch.Tensor:
        return self.completion_mask.sum(dim=1)

    def select(self, rows: torch.Tensor) -> Rollouts:
        rows = rows.to(self.completion_ids.device)
        return dataclasses.replace(
            self,
            completion_ids=self.completion_ids[rows],
            completion_mask=self.completion_mask[rows],
            texts=[self.texts[i] for i in rows.tolist()],
            prompt_index=self.prompt_index[rows],
            truncated=self.truncated[rows],
        )


def penalise_repetitions(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Hugging Face's repetition penalty (CTRL): every token already in the sequence (prompt included) has its
    logit divided by `penalty` when positive and multiplied by it when negative. `seen`: bool [N, V]."""
    penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, penalised, logits)


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, generator=None) -> torch.Tensor:
    """One token per row: greedy when temperature == 0, else nucleus sampling at `temperature`."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the first token is always kept).
        drop = sorted_p.cumsum(dim=-1) - sorted_p >= top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@gathers_weights  # sharded (FSDP2): gathered once for the whole rollout, not once per token
@torch.no_grad()
def generate_rollouts(
    model,
    batch: PromptBatch,
    tokenizer,
    *,
    group_size: int,
    max_new_tokens: int,
    eos_token_ids: list[int],
    pad_token_id: int,
    banned_token_ids: list[int] | torch.Tensor = (),
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    features: list[torch.Tensor] | None = None,
    repetition_penalty: float = 1.0,
    check_every: int = 8,
    compact: bool = True,
    static_cache: bool = False,
    compile_step: bool = False,
) -> Rollouts:
    """Prefill each prompt once and decode its `group_size` continuations together, all reading its one cache.

    `banned_token_ids` (vision special tokens, ids past the tokenizer) can never be sampled. Decoding stops
    when every sequence has produced an EOS or after `max_new_tokens`. `features` reuses precomputed
    `image_features` (a frozen vision tower: encode each image once per step for every pass).
    `repetition_penalty` != 1 applies Hugging Face's penalty to every token of the prompt (its real tokens,
    not the left padding) and of the completion so far, as `generate` does for an unpadded prompt.
    `check_every`: which rows have finished is read on the host only every that many tokens (each read waits
    for the device); rows that finished meanwhile decode padding. `compact`: at those reads, finished rows
    leave the batch (and prompts all of whose rows finished leave the shared prefix), so the compute follows
    the live rows; each row samples from the same distribution either way. `static_cache`: fixed-shape
    caches and a fixed set of rows (no compaction), so the decode step has the same shapes at every token;
    `compile_step` then runs it through `torch.compile` (static_decode.py).
    """
    if check_every < 1:
        raise ValueError(f"check_every must be positive, got {check_every}")
    if repetition_penalty <= 0:
        raise ValueError(f"repetition_penalty must be positive, got {repetition_penalty}")
    _, _, lm_head = model_parts(model)
    device = batch.input_ids.device
    state = prefill(model, batch, features=features)
    rows = torch.arange(len(batch), device=device).repeat_interleave(group_size)
    if compile_step and not static_cache:
        raise ValueError("compile_step needs static_cache: the dynamic cache changes shape at every token")
    # The rows share their prompt's cache (shared-prefix attention); other attention kernels copy it per row.
    if static_cache:
        if not shared_prefix_supported(model, state):
            raise ValueError(
                "static_cache needs shared-prefix attention (sdpa or eager, a cache of every layer)"
            )
        state = static_state(model, state, rows, max_new_tokens)
        advance = functools.partial(
            advance_static, step=compiled_static_step() if compile_step else static_step
        )
        compact = False
    elif shared_prefix_supported(model, state):
        state, advance = share_prefix(model, state, rows, reserve=max_new_tokens), feed_shared
    else:
        state, advance = state.select(rows, reserve=max_new_tokens), feed
    n = rows.numel()
    banned = torch.as_tensor(list(banned_token_ids), dtype=torch.long, device=device)
    eos = torch.as_tensor(eos_token_ids, dtype=torch.long, device=device)
    ids = torch.full((n, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    live = torch.arange(n, device=device)  # the rows still in the batch (all of them without `compact`)
    finished = torch.zeros(n, dtype=torch.bool, device=device)  # of the live rows
    hidden = state.last_hidden
    seen = None
    steps = 0
    for step in range(max_new_tokens):
        logits = lm_head(hidden).float()
        if repetition_penalty != 1.0:
            if seen is None:
                seen = _prompt_tokens(batch, logits.shape[-1])[rows]
            logits = penalise_repetitions(logits, seen, repetition_penalty)
        if banned.numel():
            logits[:, banned] = float("-inf")
        nxt = sample_next(logits, temperature, top_p, generator)
        nxt = torch.where(finished, torch.full_like(nxt, pad_token_id), nxt)
        ids[:, step].index_copy_(0, live, nxt)
        if seen is not None:
            seen[torch.arange(len(live), device=device), nxt] = True
        finished |= torch.isin(nxt, eos)
        steps = step + 1
        if step == max_new_tokens - 1:
            break
        if step % check_every == check_every - 1:
            if not compact:
                if bool(finished.all()):
                    break
            else:
                keep = (~finished).nonzero().squeeze(1)  # the one host read of these k tokens
                if keep.numel() == 0:
                    break
                if keep.numel() < len(live):
                    state = _select(state, keep, max_new_tokens - steps)
                    live, finished, nxt = live[keep], finished[keep], nxt[keep]
                    seen = seen[keep] if seen is not None else None
        hidden = advance(model, state, nxt.unsqueeze(1))[:, -1]
    ids = ids[:, :steps]
    ids = ids[:, : _completion_end(ids, eos)]  # drop the columns decoded after the last row finished
    is_eos = torch.isin(ids, eos)
    # Completion tokens: everything up to and including the first EOS.
    after_eos = (is_eos.cumsum(dim=1) - is_eos.long()) > 0
    mask = (~after_eos).long()
    truncated = ~is_eos.any(dim=1)
    texts = tokenizer.batch_decode(
        ids.masked_fill(after_eos | is_eos, pad_token_id), skip_special_tokens=True
    )
    return Rollouts(ids, mask, texts, rows, truncated, group_size)


def _select(state, keep: torch.Tensor, remaining: int):
    """The live rows `keep` of a decoding state (shared prefix or per-row copies), room for `remaining`."""
    return state.select(keep) if isinstance(state, SharedDecodeState) else state.select(keep, remaining)


def _completion_end(ids: torch.Tensor, eos: torch.Tensor) -> int:
    """Columns up to the latest first EOS of any row (all of them when a row has none)."""
    is_eos = torch.isin(ids, eos)
    if not bool(is_eos.any(dim=1).all()):
        return ids.shape[1]
    return int(is_eos.int().argmax(dim=1).max()) + 1


def _prompt_tokens(batch: PromptBatch, vocab: int) -> torch.Tensor:
    """bool [B, V]: which token ids each prompt holds (attention-masked: left padding is not a token)."""
    ids = batch.input_ids.masked_fill(batch.attention_mask == 0, -1)
    seen = torch.zeros(ids.shape[0], vocab + 1, dtype=torch.bool, device=ids.device)
    seen.scatter_(1, torch.where(ids < 0, vocab, ids).clamp(max=vocab), True)
    return seen[:, :vocab]
