"""GRPO math as pure functions: tensors in, tensors out.

Everything here is shape-checked and free of module state so it can be tested against hand-computed values
and reused by other trainers (`from samr1.modules.grpo import group_advantages, policy_loss`).
"""

from __future__ import annotations

from typing import Literal

import torch

AdvantageScale = Literal["group", "batch", "none"]
LossAggregation = Literal["token", "sequence", "fixed"]
ImportanceLevel = Literal["token", "sequence"]


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale: AdvantageScale = "group", eps: float = 1e-6
) -> torch.Tensor:
    """Advantages of `rewards` [N], laid out as consecutive groups of `group_size` completions of one prompt.

    `scale="group"`: (r - group mean) / (unbiased group std + eps) (GRPO);
    `"batch"`: (r - group mean) / (unbiased std of all N + eps) (REINFORCE++-style);
    `"none"`: r - group mean (Dr. GRPO). A group whose rewards are all equal gets exactly 0.
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [N], got shape {tuple(rewards.shape)}")
    if group_size < 2:
        raise ValueError(f"group_size must be at least 2 to compare completions, got {group_size}")
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    r = rewards.to(torch.float32)
    grouped = r.view(-1, group_size)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    # An all-equal group carries no signal; its centred rewards are float noise, so force them to 0.
    flat_group = (grouped == grouped[:, :1]).all(dim=1, keepdim=True)
    centred = centred.masked_fill(flat_group, 0.0)
    if scale == "group":
        adv = centred / (grouped.std(dim=1, keepdim=True) + eps)
    elif scale == "batch":
        std = r.std() if r.numel() > 1 else r.new_zeros(())
        adv = centred / (std + eps)
    elif scale == "none":
        adv = centred
    else:
        raise ValueError(f"unknown advantage scale {scale!r}; use 'group', 'batch' or 'none'")
    return adv.reshape(-1)


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, clamp: float | None = None) -> torch.Tensor:
    """Per-token k3 estimator of KL(policy || reference): exp(ref - logp) - (ref - logp) - 1 (always >= 0).

    `clamp`: limit each value to [-clamp, clamp], as verl's "low_var_kl" (Seg-Zero, clamp 10) does.
    """
    delta = ref_logprobs - logprobs
    kl = torch.exp(delta) - delta - 1.0
    return kl if clamp is None else kl.clamp(-clamp, clamp)


def aggregate(
    values: torch.Tensor,
    mask: torch.Tensor,
    aggregation: LossAggregation,
    max_length: int | None = None,
    normaliser: float | None = None,
) -> torch.Tensor:
    """Reduce per-token `values` [N, T] over the completion `mask` [N, T] to a scalar.

    "token": one mean over every masked token (DAPO, SAM-R1); "sequence": mean per sequence, then over
    sequences (GRPO); "fixed": sum / (N * max_length) (Dr. GRPO: a constant, the maximum completion length,
    so the scale of the loss does not change with the batch's longest completion; T <= max_length).

    `normaliser` replaces this batch's own count of the mean's units (`aggregation_units`: masked tokens for
    "token", sequences N for "sequence" and "fixed"): with the count of a larger batch (every micro-batch of
    every process) the result is this part's share of that batch's mean, and the shares add up to it.
    """
    if normaliser is not None and not normaliser > 0:
        raise ValueError(f"normaliser must be a positive count of {aggregation} units, got {normaliser}")
    mask = mask.to(values.dtype)
    masked = values * mask
    if aggregation == "token":
        return masked.sum() / (mask.sum().clamp(min=1.0) if normaliser is None else normaliser)
    if aggregation == "sequence":
        per_seq = masked.sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return per_seq.mean() if normaliser is None else per_seq.sum() / normaliser
    if aggregation == "fixed":
        if max_length is None or max_length < 1:
            raise ValueError(
                f"aggregation 'fixed' divides by N x max_length: pass max_length (the maximum completion "
                f"length, e.g. max_new_tokens), got {max_length}"
            )
        if values.shape[1] > max_length:
            raise ValueError(f"completions of {values.shape[1]} tokens exceed max_length {max_length}")
        return masked.sum() / ((values.shape[0] if normaliser is None else normaliser) * max_length)
    raise ValueError(f"unknown aggregation {aggregation!r}; use 'token', 'sequence' or 'fixed'")


def aggregation_units(mask: torch.Tensor, aggregation: LossAggregation) -> float:
    """What `aggregate` divides a batch's summed loss by, up to a constant: its masked tokens ("token")
    or its sequences ("sequence", "fixed"). Weighting micro-batch losses by their share of these units, or
    passing the whole batch's units as `normaliser`, makes gradient accumulation equal one pass over it."""
    count = aggregation_count(mask, aggregation)
    return max(count, 1.0) if aggregation == "token" else count  # a batch without completion tokens


def aggregation_count(mask: torch.Tensor, aggregation: LossAggregation) -> float:
    """`aggregation_units` without its floor of 1 token: counts of several processes add up to the global one."""
    return float(mask.sum()) if aggregation == "token" else float(mask.shape[0])


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    ref_logprobs: torch.Tensor | None = None,
    clip_low: float = 0.2,
    clip_high: float = 0.3,
    kl_coef: float = 0.0,
    aggregation: LossAggregation = "token",
    max_length: int | None = None,
    kl_clamp: float | None = None,
    importance_level: ImportanceLevel = "token",
    normaliser: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped-surrogate GRPO loss with asymmetric clipping and an optional k3 KL penalty.

    Per token: -min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A) + kl_coef * k3(ref, logp),
    reduced by `aggregate(..., aggregation, max_length)` ("fixed" needs `max_length`). `kl_clamp` clamps
    each token's k3 to [-kl_clamp, kl_clamp] (Seg-Zero: 10; None: off).
    `importance_level="token"` (GRPO): ratio = exp(logp - old) of each token.
    `"sequence"` (GSPO): every token of sequence i carries the sequence's ratio
    s_i = exp(mean over its completion tokens of (logp - old)), clipped per sequence, with the gradient of
    sg[s_i] * p(y_it) / sg[p(y_it)], i.e. s_i times each token's log-prob gradient (GSPO-token; the same
    gradient as TRL's `importance_sampling_level="sequence"`); clip fractions then count sequences.
    `normaliser`: the count of units the loss is a mean over (see `aggregate`); default this batch's own. The
    trainer passes the global mini-batch's count, so the loss of a micro-batch on one process is its share of
    one mean over every process's completions. The metrics stay means over this batch's tokens.
    Shapes: logprobs, old_logprobs, ref_logprobs, mask [N, T]; advantages [N].
    Returns the scalar loss and detached metrics (kl, clip fractions, mean ratio).
    """
    if logprobs.shape != old_logprobs.shape or logprobs.shape != mask.shape:
        raise ValueError(
            f"logprobs {tuple(logprobs.shape)}, old_logprobs {tuple(old_logprobs.shape)} and mask "
            f"{tuple(mask.shape)} must have the same [N, T] shape"
        )
    if advantages.shape != logprobs.shape[:1]:
        raise ValueError(f"advantages must be [N]={logprobs.shape[0]}, got {tuple(advantages.shape)}")
    if kl_coef > 0 and ref_logprobs is None:
        raise ValueError("kl_coef > 0 needs ref_logprobs (the reference model's token log-probs)")
    mask_f = mask.to(logprobs.dtype)
    adv = advantages.to(logprobs.dtype).unsqueeze(1)
    ratio = importance_ratio(logprobs, old_logprobs, mask_f, importance_level)
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    per_token = -torch.minimum(ratio * adv, clipped * adv)
    metrics: dict[str, torch.Tensor] = {}
    if ref_logprobs is not None:
        kl = k3_kl(logprobs, ref_logprobs, kl_clamp)
        if kl_coef > 0:
            per_token = per_token + kl_coef * kl
        metrics["kl"] = aggregate(kl.detach(), mask_f, "token")
    loss = aggregate(per_token, mask_f, aggregation, max_length, normaliser)
    with torch.no_grad():
        # A token is clipped when the clipped branch is the one the min picked and it differs from the ratio.
        low = ((ratio < 1.0 - clip_low) & (adv < 0)).to(logprobs.dtype)
        high = ((ratio > 1.0 + clip_high) & (adv > 0)).to(logprobs.dtype)
        # Sequence level: one ratio per sequence, so count (and average) sequences, not tokens.
        unit = "token" if importance_level == "token" else "sequence"
        metrics["clip_frac_low"] = aggregate(low, mask_f, unit)
        metrics["clip_frac_high"] = aggregate(high, mask_f, unit)
        metrics["ratio_mean"] = aggregate(ratio.detach(), mask_f, unit)
    return loss, metrics


def importance_ratio(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor, level: ImportanceLevel
) -> torch.Tensor:
    """Per-token importance ratios [N, T]: exp(logp - old) ("token"), or each sequence's
    exp(mean log-ratio) at every position, differentiable as sg[s_i] * exp(logp - sg[logp]) ("sequence")."""
    log_ratio = logprobs - old_logprobs
    if level == "token":
        return torch.exp(log_ratio)
    if level == "sequence":
        mask = mask.to(log_ratio.dtype)
        seq = (log_ratio * mask).sum(dim=1, keepdim=True) / mask.sum(dim=1, keepdim=True).clamp(min=1.0)
        return torch.exp(seq.detach() + logprobs - logprobs.detach())
    raise ValueError(f"unknown importance_level {level!r}; use 'token' or 'sequence'")
