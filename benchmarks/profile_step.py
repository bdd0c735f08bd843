"""Where a GRPO step spends its time: a tree of wall-clock times per optimiser step, by phase and piece.

Two settings:
  demo   configs/demo.yaml as `make demo` runs it (tiny policy, tiny SAM, 112 px shapes, 2 prompts x G=4,
         48 new tokens, think + answer format + SAM mask-IoU rewards, k3 KL, mu = 2)
  bench  the throughput benchmark's step (the ~12M "small" policy, one 840 x 840 prompt x G=8, exactly 64 new
         tokens, digit-share reward, KL 0.04, mu = 1); `--size 224` for the short-prompt variant

The pieces are timed by wrapping samr1's own functions in place (prompt building, vision tower, prefill,
decode, sampling, each reward, SAM's encoder and decoder, reference and policy log-prob passes, backward,
optimiser step); "(rest)" is a node's time not covered by its children. Not a test:

    .venv/bin/python benchmarks/profile_step.py --setting demo --steps 4
    .venv/bin/python benchmarks/profile_step.py --setting bench --size 840 --torch-profile
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import lightning as L
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent


class Tree:
    """Inclusive wall time per call path; `wrap` times a callable attribute under a label."""

    def __init__(self) -> None:
        self.stack: list[str] = []
        self.times: dict[tuple[str, ...], float] = defaultdict(float)
        self.enabled = True

    def wrap(self, owner, attr: str, label: str) -> None:
        fn = getattr(owner, attr)

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if not self.enabled:
                return fn(*args, **kwargs)
            self.stack.append(label)
            path = tuple(self.stack)
            tic = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.times[path] += time.perf_counter() - tic
                self.stack.pop()

        setattr(owner, attr, timed)

    def reset(self) -> None:
        self.times.clear()

    def report(self, per: int, title: str) -> str:
        root = [p for p in self.times if len(p) == 1]
        total = sum(self.times[p] for p in root)
        lines = [title, f"{'':<44}{'ms/step':>9}{'share':>8}"]

        def row(path: tuple[str, ...], t: float) -> str:
            return f"{'  ' * (len(path) - 1) + path[-1]:<44}{1000 * t / per:>9.1f}{100 * t / total:>7.1f}%"

        def emit(path: tuple[str, ...]) -> None:
            t = self.times[path]
            lines.append(row(path, t))
            children = sorted(
                (p for p in self.times if len(p) == len(path) + 1 and p[: len(path)] == path),
                key=lambda p: -self.times[p],
            )
            for child in children:
                emit(child)
            if children:
                rest = t - sum(self.times[c] for c in children)
                lines.append(row(path + ("(rest)",), rest))

        for path in sorted(root, key=lambda p: -self.times[p]):
            emit(path)
        return "\n".join(lines)


def instrument(tree: Tree, module) -> None:
    """Wrap samr1's pieces (module-level names where they are looked up, and the module's own methods)."""
    import samr1.models.qwen2_5_vl.prefix_cache as forward
    import samr1.modules.logprobs as logprobs
    import samr1.modules.policy as policy
    import samr1.modules.reference as reference
    import samr1.modules.rollout as rollout

    tree.wrap(module, "training_step", "step")
    tree.wrap(module, "prompts", "prompt building (processor)")
    tree.wrap(module, "rollout", "generation")
    tree.wrap(policy, "score_completions", "reward")
    tree.wrap(module, "_update", "update")
    tree.wrap(module, "manual_backward", "backward")
    tree.wrap(module, "_clip_and_norm", "grad clip")
    tree.wrap(policy, "completion_logprobs", "policy log-probs")
    tree.wrap(policy, "image_features", "vision tower (once per step)")
    tree.wrap(forward, "image_features", "vision tower")
    tree.wrap(reference, "completion_logprobs", "reference log-probs")
    for mod in (rollout, logprobs):
        tree.wrap(mod, "prefill", "prefill (prompt once)")
        tree.wrap(mod, "feed", "decoder over completions" if mod is logprobs else "decode steps")
    tree.wrap(rollout, "sample_next", "sampling")
    tree.wrap(logprobs, "token_logprobs", "lm head + log-softmax")


def force_valid_answers(module, seed: int = 0) -> None:
    """Replace each completion's text by a well-formed answer near the target (the model's tokens are kept).

    The random demo policy almost never writes a parsable answer, so SAM would never run; a trained one
    answers every time. This profiles the reward (SAM) at that cost, leaving every other phase unchanged.
    """
    rng = np.random.default_rng(seed)
    rollout = module.rollout

    def with_answers(batch, *args, **kwargs):
        out = rollout(batch, *args, **kwargs)
        texts = []
        for i in out.prompt_index.tolist():
            sample = batch.samples[i]
            box = sample.transform.to_model(np.asarray(sample.box)) + rng.normal(0, 4, 4)
            points = sample.transform.to_model(np.asarray(sample.points)) + rng.normal(0, 2, (2, 2))
            answer = {"bbox": box.round().tolist(), "points_1": points[0].round().tolist(),
                      "points_2": points[1].round().tolist()}  # fmt: skip
            texts.append(f"<think> the shape </think><answer>{json.dumps(answer)}</answer>")
        out.texts = texts
        return out

    module.rollout = with_answers


class Hooks(L.Callback):
    """Late wiring (rewards, SAM and the optimiser exist only after setup) and the warm-up cut."""

    def __init__(self, tree: Tree, warmup: int) -> None:
        self.tree, self.warmup, self.batches = tree, warmup, 0
        self.module_times: dict[str, float] = defaultdict(float)

    def on_train_start(self, trainer, pl_module) -> None:
        for reward in pl_module.rewards:
            self.tree.wrap(reward, "score", reward.name)
        seg = pl_module.segmenter
        if seg is not None:
            labels = {"embed": "SAM image encoder", "decode": "SAM mask decoder", "predict": "SAM"}
            for attr, label in labels.items():
                if hasattr(seg, attr):
                    self.tree.wrap(seg, attr, label)
        self.tree.wrap(trainer.optimizers[0], "step", "optimiser step")
        self.tree.enabled = self.warmup == 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches += 1
        if self.batches > self.warmup:
            for key, value in trainer.callback_metrics.items():
                if key.startswith("train/time/"):
                    self.module_times[key.removeprefix("train/time/")] += float(value)
        if self.batches == self.warmup:
            self.tree.reset()
            self.tree.enabled = True


def demo_parts(tiny_dir: str):
    """The demo's model and data, read from configs/demo.yaml through the CLI (paths pointed at `tiny_dir`)."""
    from samr1.cli import SamR1CLI
    from samr1.datamodules.base import SegDataModule
    from samr1.modules.policy import GRPOModule

    sys.argv = sys.argv[:1]  # LightningCLI reads only `args` below
    cli = SamR1CLI(
        GRPOModule,
        SegDataModule,
        subclass_mode_data=True,
        run=False,
        args=[
            "--config", str(ROOT / "configs/demo.yaml"),
            "--model.model_path", f"{tiny_dir}/qwen2_5_vl",
            "--model.sam_checkpoint", f"{tiny_dir}/sam_vit_tiny.pth",
            "--model.predictions_path", "null",
            "--trainer.logger", "false",
            "--trainer.callbacks", "null",
        ],
    )  # fmt: skip
    return cli.model, cli.datamodule, cli.config.model.num_iterations


def bench_parts(model_dir: str, size: int):
    """The throughput benchmark's step (see bench_grpo_step.py), driven through the real GRPOModule."""
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_grpo_step import digit_share, make_samples
    from torch.utils.data import DataLoader

    from samr1.modules.policy import GRPOModule
    from samr1.rewards.base import Reward

    class DigitShareReward(Reward):
        def score(self, completions, samples):
            return torch.tensor(digit_share(completions))

    class FixedLengthGRPO(GRPOModule):
        def configure_model(self) -> None:
            super().configure_model()
            self.banned_ids = sorted(set(self.banned_ids) | set(self.eos_ids))
            self.eos_ids = []

    module = FixedLengthGRPO(
        model_path=model_dir, rewards=[DigitShareReward()], image_size=(size, size), group_size=8,
        max_new_tokens=64, learning_rate=1e-6, num_iterations=1, micro_batch_size=8, kl_coef=0.04,
        clip_low=0.2, clip_high=0.3, aggregation="token", freeze_vision=True, seed=0,
    )  # fmt: skip
    return module, DataLoader(make_samples(size, 64), batch_size=1, collate_fn=list), 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setting", choices=["demo", "bench"], default="demo")
    parser.add_argument("--size", type=int, default=840, help="bench: image side in pixels")
    parser.add_argument("--steps", type=int, default=4, help="timed rollout batches")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rollout batches")
    parser.add_argument("--tiny-dir", default=None, help="`samr1 tiny` output (default: written fresh)")
    parser.add_argument("--valid-answers", action="store_true", help="score well-formed answers (SAM runs)")
    parser.add_argument("--torch-profile", action="store_true", help="also print torch.profiler's top ops")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from samr1.tools.tiny import write_tiny_checkpoints

    size = "tiny" if args.setting == "demo" else "small"
    tiny_dir = args.tiny_dir or tempfile.mkdtemp()
    if args.tiny_dir is None:
        write_tiny_checkpoints(tiny_dir, size=size)
    L.seed_everything(0, verbose=False)
    if args.setting == "demo":
        module, data, mu = demo_parts(tiny_dir)
        loaders = {"datamodule": data}
    else:
        module, loader, mu = bench_parts(f"{tiny_dir}/qwen2_5_vl", args.size)
        loaders = {"train_dataloaders": loader}
    if args.valid_answers:
        force_valid_answers(module)
    tree = Tree()
    instrument(tree, module)
    hooks = Hooks(tree, args.warmup)
    callbacks: list[L.Callback] = [hooks]
    if args.torch_profile:
        callbacks.append(TorchProfile(args.warmup))
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=(args.warmup + args.steps) * mu, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, callbacks=callbacks,
    )  # fmt: skip
    trainer.fit(module, **loaders)

    per = args.steps * mu
    what = "demo (configs/demo.yaml)" if args.setting == "demo" else f"bench ({args.size} px, G=8, 64 tokens)"
    what += ", answers made well-formed" if args.valid_answers else ""
    print()
    print(
        tree.report(
            per,
            f"{what}: {args.steps} rollout batches x mu={mu} = {per} optimiser steps after {args.warmup} warm-up; "
            f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}",
        )
    )
    print("\nthe module's own phase logs (train/time/*), ms per optimiser step:")
    print("  " + "  ".join(f"{k} {1000 * v / per:.1f}" for k, v in hooks.module_times.items()))


class TorchProfile(L.Callback):
    """torch.profiler over one rollout batch after the warm-up: the top ops by self CPU time."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.batches, self.prof = warmup, 0, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.batches == self.warmup:
            self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            self.prof.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.prof is not None and self.batches == self.warmup:
            self.prof.__exit__(None, None, None)
            print(self.prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
        self.batches += 1


if __name__ == "__main__":
    main()
