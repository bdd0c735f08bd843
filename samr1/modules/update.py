"""The policy update of one rollout batch: num_iterations x mini-batches x micro-batches of the GRPO loss.

Each mini-batch is one optimiser step, and its loss is one mean over the GLOBAL mini-batch (every process's
completions together): the units of that mean (completion tokens for "token", sequences for "sequence" and
"fixed") are all-reduced once per update, each micro-batch's loss is its share of the global mean, and what
a process backpropagates is scaled by the data-parallel size, since DDP and FSDP average gradients. So the
gradient does not depend on how completions are split across processes and micro-batches, and under "token"
a token on a process with short completions weighs what one on a process with long completions does
(DAPO's token-level mean; tests/e2e/test_global_batch.py).

Gradients are reduced once per optimiser step, in the backward of its last micro-batch (`gradient_sync`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from samr1.modules.grpo import LossAggregation, aggregate, aggregation_count, policy_loss
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
    """Run the update on `module` (a GRPOModule with manual optimisation).

    Returns statistics over every process: `loss` the mean over optimiser steps of the global mini-batch
    loss; kl, clip fractions, ratio_mean and entropy means over every completion token of every process
    (clip fractions and ratio_mean over every sequence with importance_level "sequence").
    """
    hp = module.hparams
    optimizer = module.optimizers()
    scheduler = module.lr_schedulers()
    n = len(batch.rollouts)
    mb_size = mini_batch_size(n, hp.mini_batch_size)
    mini_batches = [torch.arange(s, min(s + mb_size, n), device=module.device) for s in range(0, n, mb_size)]
    group, world = data_parallel(module)
    units = global_units(batch.rollouts.completion_mask, mini_batches, hp.aggregation, group, module.device)
    per_sequence = (
        {"clip_frac_low", "clip_frac_high", "ratio_mean"} if hp.importance_level == "sequence" else ()
    )
    sums: dict[str, float] = {"loss": 0.0, "tokens": 0.0, "sequences": 0.0}
    grad_norms = []
    for _ in range(hp.num_iterations):
        for rows, normaliser in zip(mini_batches, units):
            optimizer.zero_grad()
            micros = rows.split(hp.micro_batch_size)
            for i, micro in enumerate(micros):
                gradient_sync(module, i == len(micros) - 1)  # reduce once, with the last micro-batch
                loss, metrics, tokens = micro_batch_loss(module, batch, micro, normaliser)
                module.manual_backward(loss * world)  # DDP / FSDP average over `world` processes
                sums["loss"] += loss.item()
                for key, value in metrics.items():
                    sums[key] = sums.get(key, 0.0) + value * (len(micro) if key in per_sequence else tokens)
                sums["tokens"] += tokens
                sums["sequences"] += len(micro)
            grad_norms.append(clip_grad_norm(module.policy, hp.grad_clip))  # of the reduced gradient
            optimizer.step()
            scheduler.step()
    # Off between updates: DDP arms its reducer in the forward Lightning wraps around training_step whenever
    # sync is on, and the next update's first micro-batch backward would then all-reduce.
    gradient_sync(module, False)
    totals = all_reduce_sums(sums, group, module.device)
    tokens, sequences = max(totals.pop("tokens"), 1.0), max(totals.pop("sequences"), 1.0)
    stats = {k: v / (sequences if k in per_sequence else tokens) for k, v in totals.items() if k != "loss"}
    stats["loss"] = totals["loss"] / (hp.num_iterations * len(mini_batches))
    stats["grad_norm"] = float(sum(grad_norms) / max(len(grad_norms), 1))
    stats["lr"] = scheduler.get_last_lr()[0]
    return stats


def data_parallel(module) -> tuple[object | None, int]:
    """(process group, size) that gradients are averaged over: the data-parallel dimension of a
    ModelParallelStrategy's device mesh, else every process; (None, 1) without torch.distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        return None, 1
    mesh = getattr(module, "device_mesh", None)
    if mesh is not None and "data_parallel" in (mesh.mesh_dim_names or ()):
        dp = mesh["data_parallel"]
        return dp.get_group(), dp.size()
    return None, dist.get_world_size()


def global_units(
    mask: torch.Tensor, mini_batches: list[torch.Tensor], aggregation: LossAggregation, group, device
) -> list[float]:
    """Per mini-batch, the units of its loss's mean summed over every process (one all-reduce)."""
    local = [aggregation_count(mask[rows], aggregation) for rows in mini_batches]
    if group is None and not (dist.is_available() and dist.is_initialized()):
        return [max(u, 1.0) for u in local]
    counts = torch.tensor([len(local), -len(local)], dtype=torch.float64, device=device)
    dist.all_reduce(counts, op=dist.ReduceOp.MAX, group=group)
    if counts[0] != -counts[1]:
        raise RuntimeError(
            f"processes split their rollout batches into different numbers of mini-batches "
            f"({int(-counts[1])} to {int(counts[0])}); every process needs the same number of completions"
        )
    total = torch.tensor(local, dtype=torch.float64, device=device)
    dist.all_reduce(total, group=group)
    return total.clamp(min=1.0).tolist()


def all_reduce_sums(sums: dict[str, float], group, device) -> dict[str, float]:
    """`sums` added up over every process (one all-reduce; the keys are the same on every process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return dict(sums)
    keys = sorted(sums)
    values = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(values, group=group)
    return dict(zip(keys, values.tolist()))


def gradient_sync(module, enabled: bool) -> None:
    """Whether the next backward passes of `module.policy` reduce gradients across processes.

    Off for every micro-batch but the last of a mini-batch, so gradients are reduced once per optimiser step:
    DDP (`require_backward_grad_sync`, what `no_sync()` toggles; Lightning's manual backward honours it) and
    FSDP2 (`set_requires_gradient_sync` on every sharded module). Under FSDP2 each process then keeps the
    unsharded float32 gradient of every trainable parameter until the reducing backward; a strategy with
    `reduce_every_micro_batch` set (samr1.strategies.FSDP2Strategy) keeps reducing every micro-batch instead.
    No-op in one process.
    """
    trainer = getattr(module, "_trainer", None)
    strategy = trainer.strategy if trainer is not None else None
    wrapped = getattr(strategy, "model", None)
    if isinstance(wrapped, torch.nn.parallel.DistributedDataParallel):
        wrapped.require_backward_grad_sync = enabled
        return
    from torch.distributed.fsdp import FSDPModule

    enabled = enabled or bool(getattr(strategy, "reduce_every_micro_batch", False))
    for sub in module.policy.modules():
        if isinstance(sub, FSDPModule):
            sub.set_requires_gradient_sync(enabled, recurse=False)


def micro_batch_loss(module, batch: UpdateBatch, micro: torch.Tensor, normaliser: float | None = None):
    """(loss, float metrics, completion tokens) of the completions `micro` under the current policy.

    `normaliser`: the units of the global mini-batch (see `global_units`); the loss is then this micro-batch's
    share of its mean. None: the loss is the micro-batch's own mean.
    """
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
        normaliser=normaliser,
    )
    if hp.entropy_coef:
        bonus = aggregate(entropy, mask_t, hp.aggregation, hp.max_new_tokens, normaliser)
        loss = loss - hp.entropy_coef * bonus
    values = {k: v.item() for k, v in metrics.items()}
    values["entropy"] = aggregate(entropy.detach(), mask_t, "token").item()
    return loss, values, float(mask_t.sum().item())


def clip_grad_norm(model: torch.nn.Module, max_norm: float | None) -> float:
    """Clip the gradients of `model` to `max_norm` (None: no clipping); returns the norm before clipping."""
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0.0
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm else float("inf")))
