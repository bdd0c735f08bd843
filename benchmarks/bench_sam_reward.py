"""SAM mask reward for B prompts x G completions: the usual per-completion loop versus samr1's batched reward.

Naive (as peer reward code does): for every completion, `SamPredictor.set_image` on the sample's image, then
`predict` with that completion's box and points, so each image is encoded G times.
Ours: `MaskIoUReward` over `SamPromptSegmenter`, which groups the completions by image, encodes each image
once and decodes its G prompts in one batch (embedding cache off, so every step pays its encodings).

The SAM is vit_b-shaped (768-dim encoder, 1024 px input) with random weights and fewer blocks, so that the
image encoder dominates as it does with real checkpoints while a CPU run stays short. Not a test:

    .venv/bin/python benchmarks/bench_sam_reward.py [--prompts 2] [--group 8] [--depth 8] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from functools import partial

import numpy as np
import torch
from PIL import Image
from segment_anything import SamPredictor

from samr1.rewards import MaskIoUReward, RewardContext, mask_iou, parse_answer
from samr1.sam import SamPromptSegmenter
from samr1.sam.architectures import _sam
from samr1.sample import CoordTransform, SegSample


def make_sam(depth: int, seed: int = 0):
    torch.manual_seed(seed)
    global_blocks = tuple(range(2, depth, 3)) or (depth - 1,)  # vit_b's pattern: every third block is global
    build = partial(
        _sam,
        encoder_embed_dim=768,
        encoder_num_heads=12,
        encoder_global_attn_indexes=global_blocks,
        image_size=1024,
    )
    return build(encoder_depth=depth).eval()


def make_batch(prompts: int, group: int, seed: int = 0) -> tuple[list[str], list[SegSample]]:
    """B images (640 x 480, the COCO size) each answered G times in the model's 840 x 840 space."""
    rng = np.random.default_rng(seed)
    completions, samples = [], []
    for b in range(prompts):
        image = Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8))
        mask = np.zeros((480, 640), dtype=np.uint8)
        mask[100:380, 150:500] = 1
        sample = SegSample(
            id=f"img{b}",
            query="the object",
            mask=mask,
            image=image,
            transform=CoordTransform(original_size=(640, 480), model_size=(840, 840)),
        )
        for _ in range(group):
            x1, y1 = rng.uniform(50, 400, 2)
            x2, y2 = x1 + rng.uniform(100, 400), y1 + rng.uniform(100, 400)
            answer = {
                "bbox": [round(v, 1) for v in (x1, y1, x2, y2)],
                "points_1": [round((x1 + x2) / 2, 1), round((y1 + y2) / 2, 1)],
                "points_2": [round(x1 + (x2 - x1) / 3, 1), round(y1 + (y2 - y1) / 3, 1)],
            }
            completions.append(f"<think>...</think><answer>{json.dumps(answer)}</answer>")
            samples.append(sample)
    return completions, samples


@torch.inference_mode()
def naive_reward(sam, completions: list[str], samples: list[SegSample], multimask: bool) -> list[float]:
    """Raw IoU per completion, the per-completion way."""
    predictor = SamPredictor(sam)
    ious = []
    for completion, sample in zip(completions, samples):
        answer = parse_answer(completion)
        t = sample.transform
        predictor.set_image(np.asarray(sample.load_image()))  # re-encodes the image for every completion
        masks, scores, _ = predictor.predict(
            point_coords=t.to_original(np.array(answer.points)),
            point_labels=np.ones(len(answer.points)),
            box=t.to_original(np.array(answer.box)),
            multimask_output=multimask,
        )
        ious.append(mask_iou(masks[int(np.argmax(scores))], sample.mask))
    return ious


def ours_reward(reward: MaskIoUReward, completions: list[str], samples: list[SegSample]) -> list[float]:
    reward(completions, samples)
    return reward.details["iou"].tolist()


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=2, help="B: distinct images per step")
    parser.add_argument("--group", type=int, default=8, help="G: completions per prompt")
    parser.add_argument("--depth", type=int, default=8, help="image encoder blocks (vit_b has 12)")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved timed runs; the best is reported")
    parser.add_argument("--multimask", action="store_true")
    args = parser.parse_args()

    sam = make_sam(args.depth)
    completions, samples = make_batch(args.prompts, args.group)
    reward = MaskIoUReward(prompt="box+points", multimask=args.multimask)
    reward.setup(RewardContext(segmenter=SamPromptSegmenter(sam, cache_size=0)))

    naive_reward(sam, completions[:1], samples[:1], args.multimask)  # warm-up
    # Wall time and process CPU time (both threads): on a shared machine other processes inflate wall time at
    # random, while CPU time counts only this process's work. Interleaved, so a busy spell hits both.
    naive_runs, ours_runs = [], []
    for _ in range(args.repeats):
        naive_ious, wall, cpu = timed(lambda: naive_reward(sam, completions, samples, args.multimask))
        naive_runs.append((wall, cpu))
        ours_ious, wall, cpu = timed(lambda: ours_reward(reward, completions, samples))
        ours_runs.append((wall, cpu))
    (naive_wall, naive_cpu), (ours_wall, ours_cpu) = min(naive_runs), min(ours_runs)

    n = len(completions)
    print(
        f"SAM reward, B={args.prompts} prompts x G={args.group} completions = {n}; vit_b-width encoder, depth "
        f"{args.depth}, 1024 px; 640x480 images; torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs"
    )
    for label, wall, cpu in (
        ("naive (set_image per completion)", naive_wall, naive_cpu),
        ("samr1 (encode once per image)   ", ours_wall, ours_cpu),
    ):
        print(f"  {label}: wall {wall:8.3f} s ({wall / n * 1000:7.1f} ms / completion), cpu {cpu:8.3f} s")
    print(f"  speed-up: {naive_wall / ours_wall:.2f}x wall, {naive_cpu / ours_cpu:.2f}x cpu time")
    same = np.allclose(naive_ious, ours_ious, atol=1e-6)
    print(f"  same mask IoUs: {same}  (mean IoU {np.mean(ours_ious):.4f})")


if __name__ == "__main__":
    main()
