"""Train the tiny segment-anything model on synthetic shapes, offline and seeded, in about a minute on a CPU.

The random `vit_tiny` SAM of `samr1 tiny` returns noise, so SAM-R1's mask reward is 0 for every answer. This
trains the same architecture on synthetic-shape scenes with the prompts a policy writes (a box and two
points, and also a box alone or points alone), with jittered boxes and random interior points, and saves an
official-format state dict that `samr1.sam.build_sam(model_type="vit_tiny")` loads like `sam_vit_h_4b8939.pth`.

Training reproduces `SamPromptSegmenter`'s inference path (same resize, normalisation, prompt encoder, mask
decoder and upsampling to the original pixels) so the loss is measured on the masks the reward will score.
All four mask outputs learn the same target (a shape has one right mask) and the IoU head learns their IoU, so
the single mask (the reward) and the best-scoring of three (evaluation) both segment.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide

from samr1.datamodules.synthetic import make_scene
from samr1.geometry import mask_iou, tight_box

# (has a box, number of points) of each training prompt, and how often it is drawn. The policy's answer is a
# box and two points; the other layouts keep SAM sensible for partial answers.
PROMPT_LAYOUTS = ((True, 2), (True, 0), (False, 1), (False, 2))
LAYOUT_WEIGHTS = (0.55, 0.2, 0.1, 0.15)
SCENE_SEED_OFFSET = 7919  # SAM's training scenes are not the policy's train/val/test scenes


@dataclass
class TinySamReport:
    """What `write_trained_sam` measured: held-out IoU with ground-truth prompts, and the training cost."""

    path: str
    steps: int
    seconds: float
    gt_box_points_iou: float
    gt_box_iou: float
    eval_samples: int
    image_size: int


def scene_batch(
    rng: random.Random, seed: int, count: int, image_size: int, min_shapes: int = 2, max_shapes: int = 4
) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
    """`count` random training scenes: RGB uint8 arrays and, per scene, every shape's mask."""
    images, masks = [], []
    for _ in range(count):
        image, shapes, _ = make_scene(
            rng.randrange(10**9), "train", seed + SCENE_SEED_OFFSET, image_size, min_shapes, max_shapes
        )
        images.append(np.asarray(image))
        masks.append([s.mask(image_size) for s in shapes])
    return images, masks


def jittered_box(box, rng: random.Random, scale: float) -> np.ndarray:
    """The box with each side moved by up to `scale` x its side length (SAM's box-noise augmentation)."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    return np.array(
        [
            x1 + rng.uniform(-scale, scale) * w,
            y1 + rng.uniform(-scale, scale) * h,
            x2 + rng.uniform(-scale, scale) * w,
            y2 + rng.uniform(-scale, scale) * h,
        ]
    )


def interior_points(mask: np.ndarray, n: int, rng: random.Random) -> np.ndarray:
    """`n` random pixel centres inside the mask, as (x, y)."""
    ys, xs = np.nonzero(mask)
    picks = [rng.randrange(len(xs)) for _ in range(n)]
    return np.array([[xs[i] + 0.5, ys[i] + 0.5] for i in picks], dtype=np.float64)


def encode_images(sam: Sam, transform: ResizeLongestSide, images: list[np.ndarray]) -> torch.Tensor:
    """Image embeddings [B, C, h, w], exactly as `SamPromptSegmenter.encode` computes them (with gradients)."""
    x = torch.stack(
        [torch.as_tensor(transform.apply_image(im)).permute(2, 0, 1).contiguous() for im in images]
    )
    return sam.image_encoder(sam.preprocess(x.float()))


def decode_all(
    sam: Sam,
    features: torch.Tensor,
    boxes: torch.Tensor | None,
    points: tuple[torch.Tensor, torch.Tensor] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """All four mask outputs [K, 4, 4h, 4w] and IoU predictions [K, 4] for K prompts of one layout, where
    `features` [K, C, h, w] is each prompt's own image embedding. It is `MaskDecoder.predict_masks` with the
    per-image repeat replaced by per-prompt embeddings, so prompts of different images batch together."""
    decoder = sam.mask_decoder
    sparse, dense = sam.prompt_encoder(points=points, boxes=boxes, masks=None)
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat((output_tokens.unsqueeze(0).expand(sparse.size(0), -1, -1), sparse), dim=1)
    src = features + dense
    pos_src = sam.prompt_encoder.get_dense_pe().expand(len(tokens), -1, -1, -1)
    b, c, h, w = src.shape
    hs, src = decoder.transformer(src, pos_src, tokens)
    iou_token_out = hs[:, 0, :]
    mask_tokens_out = hs[:, 1 : (1 + decoder.num_mask_tokens), :]
    upscaled = decoder.output_upscaling(src.transpose(1, 2).view(b, c, h, w))
    hyper_in = torch.stack(
        [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], dim=1
    )
    b, c, h, w = upscaled.shape
    masks = (hyper_in @ upscaled.view(b, c, h * w)).view(b, -1, h, w)
    return masks, decoder.iou_prediction_head(iou_token_out)


def _sample_prompts(masks, rng: random.Random, box_jitter: float):
    """Per layout: (image index, shape mask, box or None, points or None) of each prompt of the batch."""
    groups: dict[tuple[bool, int], list] = {}
    for b, shape_masks in enumerate(masks):
        for mask in shape_masks:
            has_box, n_points = rng.choices(PROMPT_LAYOUTS, LAYOUT_WEIGHTS)[0]
            box = None
            if has_box:
                box = np.array(tight_box(mask))
                if rng.random() < 0.8:
                    box = jittered_box(box, rng, box_jitter)
            points = interior_points(mask, n_points, rng) if n_points else None
            groups.setdefault((has_box, n_points), []).append((b, mask, box, points))
    return groups


def upsample_logits(low_res: torch.Tensor, input_size, encoder_size: int, image_size: int) -> torch.Tensor:
    """Low-resolution mask logits at the original pixels in one bilinear step. `Sam.postprocess_masks` goes
    through the encoder's size first (64 -> 256 -> 112 here); one step costs a fifth of the backward pass and
    differs from it by a slight blur."""
    side = low_res.shape[-1]
    crop = (round(input_size[0] * side / encoder_size), round(input_size[1] * side / encoder_size))
    return F.interpolate(
        low_res[..., : crop[0], : crop[1]], (image_size, image_size), mode="bilinear", align_corners=False
    )


def _mask_loss(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary cross-entropy + dice per mask output [K, M], and the outputs' IoUs with the target [K, M]."""
    target = target[:, None].expand_as(logits)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dim=(2, 3))
    prob = logits.sigmoid()
    dice = 1 - (2 * (prob * target).sum(dim=(2, 3)) + 1) / (prob.sum(dim=(2, 3)) + target.sum(dim=(2, 3)) + 1)
    with torch.no_grad():
        pred = logits > 0
        inter = (pred & (target > 0.5)).sum(dim=(2, 3)).float()
        union = (pred | (target > 0.5)).sum(dim=(2, 3)).float()
        iou = inter / union.clamp(min=1)
    return bce + dice, iou


def train_tiny_sam(
    steps: int = 600,
    image_size: int = 112,
    batch_size: int = 4,
    lr: float = 4e-3,
    box_jitter: float = 0.1,
    seed: int = 0,
    model_type: str = "vit_tiny",
    log_every: int = 0,
) -> Sam:
    """A `model_type` SAM trained from a seeded random initialisation for `steps` steps of `batch_size` scenes
    of `image_size` pixels (all of each scene's shapes are prompts); AdamW with a warm-up and cosine decay."""
    from samr1.sam.architectures import build_sam_module

    torch.manual_seed(seed)
    rng = random.Random(seed)
    sam = build_sam_module(model_type)
    sam.train()
    transform = ResizeLongestSide(sam.image_encoder.img_size)
    optimizer = torch.optim.AdamW(sam.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 20)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)),
    )
    input_size = transform.get_preprocess_shape(image_size, image_size, sam.image_encoder.img_size)
    for step in range(steps):
        images, masks = scene_batch(rng, seed, batch_size, image_size)
        features = encode_images(sam, transform, images)
        losses, ious = [], []
        for (has_box, n_points), prompts in _sample_prompts(masks, rng, box_jitter).items():
            index = torch.tensor([p[0] for p in prompts])
            boxes = points = None
            if has_box:
                raw = np.stack([p[2] for p in prompts])
                boxes = torch.as_tensor(
                    transform.apply_boxes(raw, (image_size, image_size)), dtype=torch.float
                )
            if n_points:
                raw = np.stack([p[3] for p in prompts])
                coords = torch.as_tensor(
                    transform.apply_coords(raw, (image_size, image_size)), dtype=torch.float
                )
                points = (coords, torch.ones(coords.shape[:2], dtype=torch.int))
            low_res, iou_pred = decode_all(sam, features[index], boxes, points)
            logits = upsample_logits(low_res, input_size, sam.image_encoder.img_size, image_size)
            target = torch.as_tensor(np.stack([p[1] for p in prompts]), dtype=torch.float)
            loss, iou = _mask_loss(logits, target)
            losses.append(loss.sum(dim=1) + F.mse_loss(iou_pred, iou, reduction="none").sum(dim=1))
            ious.append(iou[:, 0])
        loss = torch.cat(losses).mean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(sam.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(
                f"tiny SAM step {step:4d} | loss {loss.item():.4f} | iou {torch.cat(ious).mean().item():.3f}"
            )
    return sam.eval()


def evaluate_gt_prompts(
    segmenter, num_samples: int = 64, image_size: int = 112, seed: int = 0, with_points: bool = True
) -> float:
    """Mean IoU of SAM's best-scoring mask (multimask, as evaluation uses it) prompted with the ground-truth box
    (and the two ground-truth points) of the synthetic test split's targets: held-out scenes."""
    from samr1.datamodules.synthetic import make_shapes_sample

    ious = []
    for i in range(num_samples):
        sample = make_shapes_sample(i, "test", seed, image_size, 2, 4)
        points = np.array([sample.points]) if with_points else None
        masks, _ = segmenter.predict(
            np.asarray(sample.image), boxes=np.array([sample.box]), points=points, multimask=True
        )
        ious.append(mask_iou(masks[0], sample.mask))  # the rewards' and metrics' IoU
    return float(np.mean(ious))


def write_trained_sam(
    path: str | Path,
    steps: int = 600,
    image_size: int = 112,
    seed: int = 0,
    eval_samples: int = 64,
    log_every: int = 0,
) -> TinySamReport:
    """Train the tiny SAM, save its state dict to `path` (official format) and measure it through `build_sam`."""
    from samr1.sam import build_sam

    tic = time.perf_counter()
    sam = train_tiny_sam(steps=steps, image_size=image_size, seed=seed, log_every=log_every)
    seconds = time.perf_counter() - tic
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sam.state_dict(), path)
    segmenter = build_sam(model_type="vit_tiny", checkpoint=str(path))
    return TinySamReport(
        path=str(path),
        steps=steps,
        seconds=round(seconds, 1),
        gt_box_points_iou=round(evaluate_gt_prompts(segmenter, eval_samples, image_size, seed), 4),
        gt_box_iou=round(evaluate_gt_prompts(segmenter, eval_samples, image_size, seed, False), 4),
        eval_samples=eval_samples,
        image_size=image_size,
    )


def _train_and_send(send, kwargs: dict) -> None:
    """The second process of `SamTrainingBeside`: one thread, then ("ok", report) or ("error", traceback)."""
    import traceback

    torch.set_num_threads(1)
    try:
        send.send(("ok", write_trained_sam(**kwargs)))
    except BaseException:
        send.send(("error", traceback.format_exc()))
    finally:
        send.close()


class SamTrainingBeside:
    """`write_trained_sam(**kwargs)` in a second process (one torch thread) while this process works with one
    thread fewer; `on_step` hands this process its threads back once the SAM is written. A context manager:
    leaving it restores the threads and, after an error, stops the SAM's training.

    Why: the SAM's training and the policy's warm-up each gain little from a second thread (2-core AMD EPYC:
    SAM 0.134 s a step with one thread, 0.128 with two; warm-up 0.119 and 0.099), and a third thread on two
    cores slows the warm-up by two thirds, so side by side at one thread each they take about the warm-up's
    time instead of the sum. One thread also makes the SAM's training repeatable between runs (with two it
    is not always: README, demo).
    """

    def __init__(self, **kwargs) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")  # a fork would copy this process's torch threads
        self._receive, send = context.Pipe(duplex=False)
        self._process = context.Process(target=_train_and_send, args=(send, kwargs), daemon=True)
        self._process.start()
        send.close()
        self.threads = torch.get_num_threads()
        torch.set_num_threads(max(1, self.threads - 1))

    def on_step(self, step: int) -> None:
        if torch.get_num_threads() != self.threads and self._receive.poll():
            torch.set_num_threads(self.threads)

    def result(self) -> TinySamReport:
        """The SAM's report, once its training ends; a RuntimeError with its traceback if it failed."""
        try:
            status, payload = self._receive.recv()
        except EOFError:
            status, payload = "error", f"the process ended with exit code {self._process.exitcode}"
        self._process.join()
        if status != "ok":
            raise RuntimeError(f"training the tiny SAM beside the warm-up failed:\n{payload}")
        return payload

    def __enter__(self) -> SamTrainingBeside:
        return self

    def __exit__(self, exc_type, *_) -> None:
        torch.set_num_threads(self.threads)
        if exc_type is not None:
            self._process.terminate()
            self._process.join()
