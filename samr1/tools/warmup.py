"""A short supervised warm-up that teaches a tiny random policy the answer format, and only part of the task.

A randomly initialised policy never writes `<think>...</think><answer>{...}</answer>`, so every reward is 0
and GRPO has no signal. `samr1 tiny DIR --warmup-steps N` fits the tiny policy for N steps to answers of
synthetic shapes (teacher forcing), then saves it back through `save_pretrained`.

The answers are deliberately noisy: with probability `other_shape_rate` a target is the box and points of
another shape of the same image, not the queried one. The policy learns the format and to put its box on a
shape, but not reliably on the shape the query names, so the warmed-up policy is measurably imperfect and
GRPO's mask reward has something to teach: read the colour and kind in the query and pick that shape.

`single_shape_steps` starts with a curriculum: a policy trained from scratch reads *where* a shape is much
sooner when each image holds one shape, and *which* shape the query names afterwards. Measured on 2 CPU cores
(demo size): 1,500 steps on mixed scenes (lr 3e-3, batch 16) leave the policy blind to the image (its first box
coordinate costs ~2.8 nats). On one-shape scenes it starts reading positions after ~1,500 steps both at batch
16 (lr 1e-3) and at batch 8 (lr 2e-3; not by 2,000 at 1e-3), so the demo uses batch 8, at half the cost per
step: 1,500 one-shape steps, then 700 mixed ones whose learning rate falls to 0 (`decay_steps`); ~3 min on 2
cores, test gIoU 40% (an Intel Xeon host, rotary base 1e6). With the demo policy's rotary base of 100 on an AMD
EPYC host: 25% on 128 scenes, where base 1e6 gave 18.6% there (README: demo).
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Callable
from pathlib import Path

import torch

from samr1.datamodules.synthetic import make_scene, make_shapes_sample
from samr1.geometry import tight_box
from samr1.models.qwen2_5_vl.loading import load_policy, load_processor
from samr1.modules.logprobs import completion_logprobs
from samr1.modules.prompting import PromptBuilder
from samr1.sample import SegSample

WARMUP_SEED_OFFSET = 1000  # warm-up scenes are not the datamodule's train/val/test scenes


def answer_text(sample: SegSample) -> str:
    """The sample's box and first two points as an answer in the model's input pixels (Seg-Zero's format)."""
    box = [round(v) for v in sample.transform.to_model(sample.box)]
    p1, p2 = (([round(v) for v in sample.transform.to_model(p)]) for p in sample.points[:2])
    answer = json.dumps({"bbox": box, "points_1": p1, "points_2": p2})
    return f"<think> the {sample.meta['colour']} {sample.meta['kind']} </think><answer>{answer}</answer>"


def warmup_sample(
    index: int,
    seed: int,
    image_size: int,
    other_shape_rate: float,
    rng: random.Random,
    single_shape: bool = False,
) -> SegSample:
    """Warm-up scene `index` (of one shape if `single_shape`, else 2 to 4): its query, with the box and points
    of the queried shape or, with probability `other_shape_rate` (when the image has another shape), of a
    random other shape."""
    args = (index, "train", seed + WARMUP_SEED_OFFSET, image_size, *((1, 1) if single_shape else (2, 4)))
    sample = make_shapes_sample(*args)
    if rng.random() >= other_shape_rate or sample.meta["num_shapes"] == 1:
        return sample
    _, shapes, target = make_scene(*args)
    other = shapes[rng.choice([i for i in range(len(shapes)) if i != target])]
    return dataclasses.replace(sample, box=tight_box(other.mask(image_size)), points=other.points)


def scheduled_lr(step: int, steps: int, lr: float, decay_steps: int) -> float:
    """`lr`, lowered linearly over the last `decay_steps` of `steps` (step `steps - decay_steps + k` gets
    `lr * (1 - k / decay_steps)`)."""
    into_decay = step - (steps - decay_steps)
    return lr if into_decay < 0 else lr * (1 - into_decay / decay_steps)


def supervised_warmup(
    model_dir: str | Path,
    steps: int,
    image_size: int = 112,
    batch_size: int = 16,
    lr: float = 3e-3,
    other_shape_rate: float = 0.0,
    prompt_template: str = "samr1",
    seed: int = 0,
    single_shape_steps: int = 0,
    decay_steps: int = 0,
    on_step: Callable[[int], None] | None = None,
) -> list[float]:
    """Fit the policy in `model_dir` to synthetic-shape answers for `steps` steps; returns the losses.

    Args:
        model_dir: the Qwen2.5-VL directory to fit and overwrite.
        steps: optimiser steps (AdamW at `lr`, see `decay_steps`).
        image_size: side of the synthetic images, which the policy also sees at this size.
        batch_size: answers per step.
        lr: learning rate.
        other_shape_rate: probability that a target answer is another shape of the image (0: always the
            queried one).
        prompt_template: the instruction, a preset name or a template with `{query}` (as
            `GRPOModule.prompt_template`; GRPO must then use the same one).
        seed: seeds the initial state, the scenes and the noise.
        single_shape_steps: the first this many of the `steps` show one shape per image (a curriculum).
        decay_steps: the last this many steps lower the learning rate linearly towards 0 (0: constant).
        on_step: called with each step's index after its update (`samr1 tiny` hands threads back with it).
    """
    if not 0.0 <= other_shape_rate <= 1.0:
        raise ValueError(f"other_shape_rate must be in [0, 1], got {other_shape_rate}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if not 0 <= single_shape_steps <= steps:
        raise ValueError(f"single_shape_steps must be in [0, steps={steps}], got {single_shape_steps}")
    if not 0 <= decay_steps <= steps:
        raise ValueError(f"decay_steps must be in [0, steps={steps}], got {decay_steps}")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = load_policy(str(model_dir))
    processor = load_processor(str(model_dir))
    tokenizer = processor.tokenizer
    builder = PromptBuilder(processor, template=prompt_template, image_size=(image_size, image_size))
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    losses = []
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = scheduled_lr(step, steps, lr, decay_steps)
        single = step < single_shape_steps
        samples = [
            warmup_sample(rng.randrange(10**6), seed, image_size, other_shape_rate, rng, single)
            for _ in range(batch_size)
        ]
        prompts = builder(samples)
        targets = [
            tokenizer(answer_text(s), add_special_tokens=False)["input_ids"] + [end] for s in prompts.samples
        ]
        length = max(map(len, targets))
        ids = torch.full((len(targets), length), tokenizer.pad_token_id)
        mask = torch.zeros(len(targets), length)
        for i, t in enumerate(targets):
            ids[i, : len(t)] = torch.tensor(t)
            mask[i, : len(t)] = 1
        logp, _ = completion_logprobs(model, prompts, ids, torch.arange(len(targets)))
        loss = -(logp * mask).sum() / mask.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(step)
    model.save_pretrained(model_dir, safe_serialization=True)
    return losses
