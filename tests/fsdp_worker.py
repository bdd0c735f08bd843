"""Two-process FSDP2 checks on CPU (gloo), launched by tests/test_fsdp.py under `torchrun --nproc-per-node 2`.

1. pieces: for an untied and a tied tiny Qwen2.5-VL, the sharded policy's rollouts, log-probs and gradients
   equal the unsharded model's, and a rollout all-gathers each unit once (not once per token);
2. fit: GRPO with samr1.strategies.FSDP2Strategy (configs/strategy/fsdp_cpu.yaml's settings) and activation
   checkpointing (as the GPU recipes), a full checkpoint every step, the losses written to losses_fit.json;
3. resume: `fit(ckpt_path=<step 2>)` to the same max_steps, losses to losses_resume.json.
Rank 0 writes results to --out.
"""

from __future__ import annotations

import argparse
import json
import zlib
from pathlib import Path

import lightning as L
import torch
import torch.distributed as dist
from toy_rewards import DigitShareReward

from samr1.datamodules import SyntheticShapesDataModule
from samr1.modules.module import GRPOModule
from samr1.modules.rollout import Rollouts

# The GRPO settings shared by the sharded runs here and the one-process run in tests/test_fsdp.py.
SETTINGS = dict(
    image_size=(56, 56),
    group_size=4,
    max_new_tokens=6,
    learning_rate=1e-3,
    num_iterations=2,  # old log-probs and clipping act
    micro_batch_size=2,  # gradient accumulation inside a mini-batch
    kl_coef=0.05,  # the sharded reference too
    aggregation="token",
)
MAX_STEPS = 6  # optimiser steps: 3 rollout batches x num_iterations


class FixedRolloutGRPO(GRPOModule):
    """GRPOModule whose training completions depend on the sample only, not on the per-rank sampling stream.

    Sampling is seeded per process, so a 2-process and a 1-process run never sample the same completions;
    with these fixed ones (all of the same length: per-rank token means then equal the global one) both
    train on the same global batch, and everything after sampling (rewards, log-probs, the sharded update,
    checkpoints) is samr1's own code.
    """

    def rollout(self, batch, group_size, temperature, max_new_tokens, features=None) -> Rollouts:
        if temperature <= 0:
            return super().rollout(batch, group_size, temperature, max_new_tokens, features)
        never = set(self.banned_ids) | set(self.eos_ids)
        allowed = torch.tensor([i for i in range(len(self.processor.tokenizer)) if i not in never])
        rows = []
        for sample in batch.samples:
            generator = torch.Generator().manual_seed(zlib.crc32(sample.id.encode()))
            rows.append(
                allowed[torch.randint(len(allowed), (group_size, max_new_tokens), generator=generator)]
            )
        ids = torch.cat(rows).to(self.device)
        return Rollouts(
            completion_ids=ids,
            completion_mask=torch.ones_like(ids),
            texts=self.processor.tokenizer.batch_decode(ids, skip_special_tokens=True),
            prompt_index=torch.arange(len(batch), device=self.device).repeat_interleave(group_size),
            truncated=torch.ones(ids.shape[0], dtype=torch.bool, device=self.device),
            group_size=group_size,
        )


class LossHistory(L.Callback):
    """Per rollout batch: this process's loss and the gradient norm (of the global batch's gradient)."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.grad_norms: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(trainer.callback_metrics["train/loss"]))
        self.grad_norms.append(float(trainer.callback_metrics["train/grad_norm"]))


class CountedReductions:
    """Counts FSDP2's gradient reductions (torch's private `foreach_reduce`, one call per unit and backward
    use) by whether samr1's `gradient_sync` had turned sync on for that micro-batch."""

    def __init__(self) -> None:
        from torch.distributed.fsdp._fully_shard import _fsdp_param_group

        import samr1.modules.update as update

        self.targets = [(_fsdp_param_group, "foreach_reduce"), (update, "gradient_sync")]
        self.sync, self.counts = True, {True: 0, False: 0}

    def __enter__(self):
        self.originals = [getattr(module, name) for module, name in self.targets]
        reduce, sync = self.originals

        def counted_reduce(*args, **kwargs):
            self.counts[self.sync] += 1
            return reduce(*args, **kwargs)

        def recorded_sync(module, enabled):
            self.sync = enabled
            return sync(module, enabled)

        for (module, name), new in zip(self.targets, (counted_reduce, recorded_sync)):
            setattr(module, name, new)
        return self

    def __exit__(self, *exc) -> None:
        for (module, name), original in zip(self.targets, self.originals):
            setattr(module, name, original)


def fit(
    policy: str,
    sam: str,
    root: Path,
    strategy,
    devices: int,
    batch_size: int,
    ckpt_path: str | None = None,
    gradient_checkpointing: bool = False,
):
    """One GRPO fit of MAX_STEPS optimiser steps; a full checkpoint after every step; {losses, grad_norms}."""
    L.seed_everything(0)
    # SAM and predictions_path are for `samr1 test` on the checkpoint, which takes them from its hparams.
    module = FixedRolloutGRPO(
        model_path=policy,
        sam_checkpoint=sam,
        sam_model_type="vit_tiny",
        predictions_path=str(root / "test_predictions.jsonl"),
        rewards=[DigitShareReward()],
        gradient_checkpointing=gradient_checkpointing,
        **SETTINGS,
    )
    data = SyntheticShapesDataModule(
        num_train=8, image_size=56, batch_size=batch_size, val_split=None, test_split=None
    )
    history = LossHistory()
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=root, filename="{step}", save_top_k=-1, every_n_train_steps=1
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=strategy,
        max_steps=MAX_STEPS,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[history, checkpoint],
        default_root_dir=root,
    )
    with CountedReductions() as reductions:
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return {
        "losses": history.losses,
        "grad_norms": history.grad_norms,
        "reductions_synced": reductions.counts[True],
        "reductions_unsynced": reductions.counts[False],
    }


def pieces(policy: str, rank: int) -> dict:
    """Sharded vs unsharded on the same inputs: rollouts, log-probs, gradients, all-gathers per rollout."""
    from torch.distributed.device_mesh import init_device_mesh

    from samr1.models.qwen2_5_vl.loading import load_policy, load_processor, special_token_ids
    from samr1.models.qwen2_5_vl.sharding import shard_policy
    from samr1.modules.logprobs import completion_logprobs
    from samr1.modules.prompting import PromptBuilder
    from samr1.modules.rollout import generate_rollouts

    plain, sharded = load_policy(policy), load_policy(policy)
    shard_policy(sharded, init_device_mesh("cpu", (dist.get_world_size(),)), dtype="float32")
    processor = load_processor(policy)
    data = SyntheticShapesDataModule(image_size=56)
    samples = [data.dataset("train")[2 * i + rank] for i in range(2)]  # different prompts on each rank
    prompts = PromptBuilder(processor, image_size=(56, 56))(samples)
    eos, banned = special_token_ids(processor.tokenizer, plain.lm_head.weight.shape[0])
    kwargs = dict(group_size=3, max_new_tokens=8, eos_token_ids=eos, banned_token_ids=banned)
    kwargs["pad_token_id"] = processor.tokenizer.pad_token_id

    def rollout(model):
        return generate_rollouts(
            model, prompts, processor.tokenizer, generator=torch.Generator().manual_seed(rank), **kwargs
        )

    gathers = [0]
    all_gather = dist.all_gather_single

    def counting(*args, **kw):
        gathers[0] += 1
        return all_gather(*args, **kw)

    expected, dist.all_gather_single = rollout(plain), counting
    try:
        got = rollout(sharded)
    finally:
        dist.all_gather_single = all_gather
    ids, index = expected.completion_ids, expected.prompt_index
    logp_plain, _ = completion_logprobs(plain, prompts, ids, index)
    logp_sharded, _ = completion_logprobs(sharded, prompts, ids, index)
    (logp_plain * expected.completion_mask).sum().backward()
    (logp_sharded * expected.completion_mask).sum().backward()
    grad_error = 0.0
    for p_plain, p_sharded in zip(plain.parameters(), sharded.parameters()):
        if p_plain.grad is None:
            continue
        mean = p_plain.grad.clone()
        dist.all_reduce(mean)  # FSDP2 averages gradients over the processes
        mean /= dist.get_world_size()
        grad_error = max(grad_error, (mean - p_sharded.grad.full_tensor()).abs().max().item())
    tied = sharded.lm_head.weight is sharded.model.language_model.embed_tokens.weight
    # Units holding weights: vision blocks, decoder layers, vision tower, decoder, embedding (+ lm_head).
    units = len(sharded.model.visual.blocks) + len(sharded.model.language_model.layers) + (3 if tied else 4)
    return {
        "tied": tied,
        "rollouts_equal": torch.equal(got.completion_ids, expected.completion_ids),
        "tokens_decoded": int(expected.completion_ids.shape[1]),
        "all_gathers_per_rollout": gathers[0],
        "logprob_max_error": (logp_plain - logp_sharded).abs().max().item(),
        "grad_max_error": grad_error,
        "grad_max": max(p.grad.abs().max().item() for p in plain.parameters() if p.grad is not None),
        "units": units,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--policy", required=True)
    parser.add_argument("--tied-policy", required=True)
    parser.add_argument("--sam", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    out = Path(args.out)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    results = {
        "pieces": {
            name: pieces(path, rank) for name, path in (("untied", args.policy), ("tied", args.tied_policy))
        }
    }
    from samr1.strategies import FSDP2Strategy

    # configs/strategy/fsdp_cpu.yaml's strategy; one prompt per process.
    for name, resume_from in (("fit", None), ("resume", str(out / "fit" / "step=2.ckpt"))):
        strategy = FSDP2Strategy(process_group_backend="gloo")
        # With activation checkpointing, as the GPU recipes: the one-process run it is compared with has none.
        results[name] = fit(args.policy, args.sam, out / name, strategy, 2, 1, resume_from, True)
    if rank == 0:
        (out / "results.json").write_text(json.dumps(results, indent=2))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
