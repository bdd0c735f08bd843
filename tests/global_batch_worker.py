"""The update loop on fixed completions, in one process or as one rank of a DDP run (tests/e2e/test_global_batch.py).

No sampling: every process builds the same global batch (4 prompts, 4 completions each, random token ids,
advantages and reference offsets), keeps its share and runs `update_policy` on it. Rank 0's completions are
1-3 tokens long, rank 1's 10-16, so a per-process normalisation would weigh them differently. One process
(`world=1`) takes the union, ordered so that its k-th mini-batch is the union of the ranks' k-th mini-batches.

Run as a script it is one rank of a `world`-process DDP run (LOCAL_RANK, MASTER_PORT set by the caller) and
writes what it measured to `<out>/rank<r>.pt`.
"""

from __future__ import annotations

import argparse
import os

import lightning as L
import torch
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from samr1.datamodules.synthetic import make_shapes_sample
from samr1.modules.logprobs import completion_logprobs
from samr1.modules.module import GRPOModule
from samr1.modules.rollout import Rollouts
from samr1.modules.update import UpdateBatch, update_policy

GROUP, RANKS = 2, 2
LENGTHS = [1, 3, 2, 1, 12, 9, 10, 12]  # rank 0's completions (2 prompts x GROUP), then rank 1's
MINI_BATCH, MICRO_BATCH, ITERATIONS = 2, 1, 1  # per rank: 2 optimiser steps of 2 micro-batches
OPTIMIZER_STEPS = ITERATIONS * (len(LENGTHS) // RANKS // MINI_BATCH)
MICRO_BATCHES = OPTIMIZER_STEPS * MINI_BATCH // MICRO_BATCH


def global_batch(pad_id: int):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, 1000, (len(LENGTHS), max(LENGTHS)), generator=g)
    mask = (torch.arange(max(LENGTHS)).unsqueeze(0) < torch.tensor(LENGTHS).unsqueeze(1)).long()
    advantages = torch.randn(len(LENGTHS), generator=g)
    ref_offsets = 0.1 * torch.randn(ids.shape, generator=g)  # reference = sampling policy + offsets: KL > 0
    return ids.masked_fill(mask == 0, pad_id), mask, advantages, ref_offsets


def rows_of(rank: int, world: int) -> torch.Tensor:
    """The global rows a process updates on, in its order."""
    per_rank = len(LENGTHS) // RANKS
    if world == RANKS:
        return torch.arange(rank * per_rank, (rank + 1) * per_rank)
    chunks = [torch.arange(r * per_rank + s, r * per_rank + s + MINI_BATCH) for s in range(0, per_rank, MINI_BATCH)
              for r in range(RANKS)]  # fmt: skip
    return torch.cat(chunks)


class FixedCompletions(GRPOModule):
    """GRPOModule whose training step updates on the fixed global batch instead of sampling."""

    world = 1

    def configure_model(self) -> None:
        super().configure_model()
        # float64, so the two runs differ by rounding that cannot hide a normalisation error (float32's
        # ~1e-6 relative differences are amplified by AdamW's per-element scaling).
        self.policy.double()

    def train_dataloader(self):
        return torch.utils.data.DataLoader(list(range(self.world)), batch_size=1, collate_fn=list)

    def on_train_start(self) -> None:
        trainable = [p for p in self.policy.parameters() if p.requires_grad]
        self.grads: list[list[torch.Tensor]] = []
        self.optimizers().optimizer.register_step_pre_hook(
            lambda *args: self.grads.append([p.grad.detach().clone() for p in trainable])
        )
        self.reductions: list[bool] = []  # one entry per bucket all-reduce: is it a backward's last bucket
        ddp = self.trainer.strategy.model
        if isinstance(ddp, torch.nn.parallel.DistributedDataParallel):

            def counting_allreduce(state, bucket):
                self.reductions.append(bucket.is_last())
                return default_hooks.allreduce_hook(None, bucket)

            ddp.register_comm_hook(None, counting_allreduce)

    def training_step(self, batch, batch_idx) -> None:
        rank = self.global_rank if self.world > 1 else 0
        rows = rows_of(rank, self.world)
        prompt_of = rows // GROUP  # global prompt of each row
        prompt_ids = sorted(set(prompt_of.tolist()))
        prompts = self.prompts([make_shapes_sample(i, "train", 0, 56, 1, 2) for i in prompt_ids])
        ids, mask, advantages, offsets = global_batch(self.processor.tokenizer.pad_token_id)
        local_prompt = torch.tensor([prompt_ids.index(p) for p in prompt_of.tolist()])
        rollouts = Rollouts(
            completion_ids=ids[rows],
            completion_mask=mask[rows],
            texts=[""] * len(rows),
            prompt_index=local_prompt,
            truncated=torch.zeros(len(rows), dtype=torch.bool),
            group_size=GROUP,
        )
        features = self.frozen_image_features(prompts)
        with torch.no_grad():
            old, _ = completion_logprobs(self.policy, prompts, ids[rows], local_prompt, features=features)
        update = UpdateBatch(prompts, rollouts, advantages[rows], old, old + offsets[rows], features)
        self.stats = update_policy(self, update)


def run(model_path: str, aggregation: str, world: int, trainer_kwargs: dict) -> dict:
    """Fit one step of FixedCompletions; returns the gradients per optimiser step, parameters, stats and
    the DDP reductions it saw."""
    L.seed_everything(0)
    module = FixedCompletions(
        model_path=model_path,
        image_size=(56, 56),
        prompt_template="{query}",  # short prompts: a fast test
        group_size=GROUP,
        max_new_tokens=max(LENGTHS),
        learning_rate=1e-2,  # large enough that later steps clip
        num_iterations=ITERATIONS,
        mini_batch_size=MINI_BATCH * (RANKS // world),
        micro_batch_size=MICRO_BATCH,  # the same micro-batches as the ranks: identical float rounding
        grad_clip=None,
        kl_coef=0.05,
        entropy_coef=0.01,
        aggregation=aggregation,
    )
    module.world = world
    trainer = L.Trainer(
        accelerator="cpu",
        devices=world,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **trainer_kwargs,
    )
    trainer.fit(module)
    return {
        "grads": module.grads,
        "params": {n: p.detach().clone() for n, p in module.policy.named_parameters()},
        "stats": module.stats,
        "reductions": module.reductions,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--aggregations", default="token,sequence,fixed")
    args = parser.parse_args()
    results = {a: run(args.model, a, RANKS, {"strategy": "ddp"}) for a in args.aggregations.split(",")}
    torch.save(results, os.path.join(args.out, f"rank{os.environ['LOCAL_RANK']}.pt"))
