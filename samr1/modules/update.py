"""The policy update of one rollout batch: num_iterations x mini-batches x micro-batches of the GRPO loss.

Each mini-batch is one optimiser step; its micro-batches accumulate gradients, each weighted by its share of
the mini-batch's aggregation units, so accumulation equals one pass over the mini-batch under every
aggregation (tests/unit/modules/test_grpo.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from samr1.modules.grpo import aggregate, aggregation_units, policy_loss
from samr1.modules.logprobs import completion_logprobs
from samr1.modules.prompting import PromptBatch
from samr1.modules.rollout import Rollouts


@dataclass
class UpdateBatch:
    """A scored rollout batch, ready for the update (N completions, T tokens)."""

    prompts: PromptBatch
    rollouts: Rollouts
    advantages: torch.Tensor  # [N]
    old_logprobs: torch.Tensor | None  # [N, T]; None: the policy has not moved since sampling
    ref_logprobs: torch.Tensor | None  # [N, T]; None without a KL term
    features: list[torch.Tensor] | None  # per-prompt vision features when the vision tower is frozen


def mini_batch_size(n: int, configured: int | None) -> int:
    """Completions per optimiser step out of a rollout batch of `n` (all of them by default)."""
    return n if configured is None else min(configured, n)


def needs_old_logprobs(n: int, num_iterations: int, configured_mini_batch: int | None) -> bool:
    """With one pass and one mini-batch the policy has not moved: old == current, detached."""
    return num_iterations > 1 or mini_batch_size(n, configured_mini_batch) < n


def update_policy(module, batch: UpdateBatch) -> dict[str, float]:
    """Run the update on `module` (a GRPOModule with manual optimisation); returns token-weighted stats."""
    hp = module.hparams
    optimizer = module.optimizers()
    scheduler = module.lr_schedulers()
    n = len(batch.rollouts)
    mask = batch.rollouts.completion_mask.to(torch.float32)
    mb_size = mini_batch_size(n, hp.mini_batch_size)
    sums: dict[str, float] = {}
    token_count = 0.0
    grad_norms = []
    for _ in range(hp.num_iterations):
        for start in range(0, n, mb_size):
            rows = torch.arange(start, min(start + mb_size, n), device=module.device)
            optimizer.zero_grad()
            normaliser = aggregation_units(mask[rows], hp.aggregation)
            for micro in rows.split(hp.micro_batch_size):
                loss, metrics, tokens = micro_batch_loss(module, batch, micro)
                # Each micro-batch loss is normalised over itself; weight it by its share of the mini-batch.
                weight = aggregation_units(mask[micro], hp.aggregation) / normaliser
                module.manual_backward(loss * weight)
                for key, value in metrics.items():
                    sums[key] = sums.get(key, 0.0) + value * tokens
                token_count += tokens
            grad_norms.append(clip_grad_norm(module.policy, hp.grad_clip))
            optimizer.step()
            scheduler.step()
    stats = {key: value / max(token_count, 1.0) for key, value in sums.items()}
    stats["grad_norm"] = float(sum(grad_norms) / max(len(grad_norms), 1))
    stats["lr"] = scheduler.get_last_lr()[0]
    return stats


def micro_batch_loss(module, batch: UpdateBatch, micro: torch.Tensor):
    """(loss, float metrics, completion tokens) of the completions `micro` under the current policy."""
    hp = module.hparams
    rollouts = batch.rollouts
    mask = rollouts.completion_mask[micro]
    length = max(int(mask.sum(dim=1).max().item()), 1)  # compute only up to the longest completion
    ids = rollouts.completion_ids[micro, :length]
    mask_t = mask[:, :length]
    logp, entropy = completion_logprobs(
        module.policy,
        batch.prompts,
        ids,
        rollouts.prompt_index[micro],
        temperature=module.logprob_temperature(),
        features=batch.features,
    )
    old = batch.old_logprobs[micro, :length] if batch.old_logprobs is not None else logp.detach()
    ref = batch.ref_logprobs[micro, :length] if batch.ref_logprobs is not None else None
    # "fixed" (Dr. GRPO) divides by N x max_new_tokens, a constant: no padding to the rollout's length needed.
    loss, metrics = policy_loss(
        logp,
        old,
        batch.advantages[micro],
        mask_t,
        ref_logprobs=ref,
        clip_low=hp.clip_low,
        clip_high=hp.clip_high,
        kl_coef=hp.kl_coef,
        aggregation=hp.aggregation,
        max_length=hp.max_new_tokens,
        kl_clamp=hp.kl_clamp,
        importance_level=hp.importance_level,
    )
    if hp.entropy_coef:
        loss = loss - hp.entropy_coef * aggregate(entropy, mask_t, hp.aggregation, hp.max_new_tokens)
    values = {k: v.item() for k, v in metrics.items()}
    values["entropy"] = aggregate(entropy.detach(), mask_t, "token").item()
    values["loss"] = loss.item()
    return loss, values, float(mask_t.sum().item())


def clip_grad_norm(model: torch.nn.Module, max_norm: float | None) -> float:
    """Clip the gradients of `model` to `max_norm` (None: no clipping); returns the norm before clipping."""
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0.0
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm else float("inf")))
