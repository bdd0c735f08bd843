"""Token log-probs of completions given their prompts: the expensive forward, kept in one place.

Prompts are prefilled once per pass and their completions attend to that one cache (see `shared_prefix.py`).
Log-softmax runs over chunks of positions under activation checkpointing, so full-vocabulary float32 logits
are never held for every position at once.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from samr1.models.qwen2_5_vl.prefix_cache import feed, model_parts, prefill
from samr1.models.qwen2_5_vl.shared_prefix import feed_shared, share_prefix, shared_prefix_supported
from samr1.modules.prompting import PromptBatch


def _chunk_logprobs(
    hidden: torch.Tensor, lm_head: torch.nn.Module, targets: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    logits = lm_head(hidden)
    if logits.dtype in (torch.float16, torch.bfloat16):  # log-softmax over the vocabulary in float32 at least
        logits = logits.float()
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def token_logprobs(
    hidden: torch.Tensor,
    lm_head: torch.nn.Module,
    targets: torch.Tensor,
    temperature: float = 1.0,
    chunk: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(targets) and entropy per position from `hidden` [n, T, H]; memory bounded by `chunk` positions."""
    logps, ents = [], []
    for s in range(0, hidden.shape[1], chunk):
        h, t = hidden[:, s : s + chunk], targets[:, s : s + chunk]
        if torch.is_grad_enabled() and h.requires_grad:
            lp, en = checkpoint(_chunk_logprobs, h, lm_head, t, temperature, use_reentrant=False)
        else:
            lp, en = _chunk_logprobs(h, lm_head, t, temperature)
        logps.append(lp)
        ents.append(en)
    return torch.cat(logps, dim=1), torch.cat(ents, dim=1)


def completion_logprobs(
    model,
    batch: PromptBatch,
    completion_ids: torch.Tensor,
    prompt_index: torch.Tensor,
    *,
    temperature: float = 1.0,
    features: list[torch.Tensor] | None = None,
    chunk: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs and entropies [n, T] of `completion_ids` [n, T], row i answering prompt `prompt_index[i]`.

    Each distinct prompt is prefilled once; `features` reuses vision-tower outputs (frozen vision tower).
    """
    _, _, lm_head = model_parts(model)
    prompts = sorted(set(prompt_index.tolist()))
    local = {p: i for i, p in enumerate(prompts)}
    state = prefill(model, batch, prompts, features)
    rows = torch.as_tensor([local[p] for p in prompt_index.tolist()], device=completion_ids.device)
    # Every row reads its prompt's one cache (shared-prefix attention); other attention kernels copy it.
    if shared_prefix_supported(model, state):
        state, step = share_prefix(model, state, rows), feed_shared
    else:
        state, step = state.select(rows), feed
    first = state.last_hidden.unsqueeze(1)
    if completion_ids.shape[1] > 1:
        rest = step(model, state, completion_ids[:, :-1])
        hidden = torch.cat([first, rest], dim=1)
    else:
        hidden = first
    return token_logprobs(hidden, lm_head, completion_ids, temperature, chunk)
