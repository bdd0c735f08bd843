"""A short supervised warm-up that teaches a tiny random policy the answer format on synthetic shapes.

A randomly initialised policy never writes `<think>...</think><answer>{...}</answer>`, so every reward is 0
and GRPO has no signal. For the demo, `samr1 tiny DIR --warmup-steps N` fits the tiny policy for N steps to
the ground-truth answers of synthetic shapes (teacher forcing), then saves it back through `save_pretrained`.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from samr1.datamodules.synthetic import make_shapes_sample
from samr1.models.qwen2_5_vl.loading import load_policy, load_processor
from samr1.modules.logprobs import completion_logprobs
from samr1.modules.prompting import PromptBuilder
from samr1.sample import SegSample


def answer_text(sample: SegSample) -> str:
    """The ground-truth answer in the model's input pixels, in Seg-Zero's format."""
    box = [round(v) for v in sample.transform.to_model(sample.box)]
    p1, p2 = (([round(v) for v in sample.transform.to_model(p)]) for p in sample.points[:2])
    answer = json.dumps({"bbox": box, "points_1": p1, "points_2": p2})
    return f"<think> the {sample.meta['colour']} {sample.meta['kind']} </think><answer>{answer}</answer>"


def supervised_warmup(
    model_dir: str | Path,
    steps: int,
    image_size: int = 112,
    batch_size: int = 8,
    lr: float = 3e-3,
    seed: int = 0,
) -> list[float]:
    """Fit the policy in `model_dir` to synthetic-shape answers for `steps` steps; returns the losses."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = load_policy(str(model_dir))
    processor = load_processor(str(model_dir))
    tokenizer = processor.tokenizer
    builder = PromptBuilder(processor, image_size=(image_size, image_size))
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        samples = [
            make_shapes_sample(rng.randrange(10**6), "train", seed + 1000, image_size, 2, 4)
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
    model.save_pretrained(model_dir, safe_serialization=True)
    return losses
