"""`samr1 prepare refcocog-subset`: SAM-R1's training set, N seeded random RefCOCOg train expressions.

Writes `<out>/train.jsonl` (the format JsonlSegDataset reads) and `<out>/images/`: each image once, copied
unchanged, or, with `--max-side S`, scaled down so that its longer side is S with the aspect ratio kept (never
stretched: SAM segments what is stored, and the policy's own 840 x 840 resize happens at prompt time and is
undone before SAM). Each sample's mask is COCO RLE at the stored image's size (scaled nearest-neighbour); the
tight box and GT points (centres of the two largest inscribed circles) are computed on the full-resolution
mask and scaled by exactly the stored/original size ratio of each axis (identity without scaling).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from samr1.datamodules.base import BadSampleLog, OnError
from samr1.datamodules.masks import encode_rle, inscribed_circle_points, tight_box
from samr1.datamodules.refcoco import RefCOCODataset

log = logging.getLogger(__name__)


def capped_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """(width, height) scaled so that the longer side is at most `max_side`, aspect ratio kept (rounded)."""
    if max_side is None or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _scale_mask(target: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if size == target.shape[::-1]:
        return target
    # Nearest neighbour keeps the mask binary; PIL samples pixel centres (no half-pixel shift).
    image = Image.fromarray(target.astype(np.uint8))
    return np.asarray(image.resize(size, Image.Resampling.NEAREST)).astype(bool)


def prepare_refcocog_subset(
    data_root: str | Path,
    image_root: str | Path,
    out_dir: str | Path,
    n: int = 3000,
    seed: int = 0,
    max_side: int | None = None,
    dataset: str = "refcocog",
    split_by: str = "umd",
    split: str = "train",
    on_error: OnError = "error",
) -> Path:
    """Writes N random expressions of the split to `<out_dir>/train.jsonl` and returns its path.

    The draw is a seeded permutation of the split's sentences (numpy `default_rng(seed)`), taken in order
    until N samples are written: under `on_error="skip"`, a broken sample is replaced by the next one, so the
    output still has N samples when the split has enough good ones. Same data + seed -> same file.
    `max_side`: scale images (and masks) down so the longer side is at most this, keeping the aspect ratio.
    """
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be a positive number of pixels, got {max_side}")
    source = RefCOCODataset(data_root, image_root, dataset, split_by, split, on_error=on_error)
    if n > len(source):
        raise ValueError(f"asked for {n} samples, but {source.name} has only {len(source)} sentences")
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    bad = BadSampleLog(on_error, f"prepare {source.name}")
    order = np.random.default_rng(seed).permutation(len(source))
    stored: dict[str, str] = {}  # source image -> its relative path in out_dir
    jsonl = out_dir / "train.jsonl"
    partial = jsonl.with_suffix(".jsonl.partial")
    written = 0
    with (
        open(partial, "w", encoding="utf-8") as f,
        tqdm(total=n, desc="refcocog subset", unit="sample") as bar,
    ):
        for index in order:
            if written == n:
                break
            try:
                line = _line(source[int(index)], out_dir, stored, max_side)
            except (OSError, ValueError) as err:
                bad.handle(err, f"sample {source.items[int(index)].id}")
                continue
            f.write(json.dumps(line) + "\n")
            written += 1
            bar.update(1)
    if written < n:
        raise ValueError(f"only {written} of {n} samples could be written; {len(bad.skipped)} were broken")
    os.replace(partial, jsonl)  # a finished file only: an interrupted run leaves no train.jsonl behind
    if bad.skipped:
        log.warning("prepare: replaced %d broken samples", len(bad.skipped))
    return jsonl


def _line(sample, out_dir: Path, stored: dict[str, str], max_side: int | None) -> dict:
    original = Path(sample.image_path)
    # The dataset decoded the image (samr1.images: upright, RGB), so a truncated file failed before this.
    image = sample.load_image()
    width, height = image.size
    size = capped_size(width, height, max_side)
    if str(original) not in stored:
        if size == (width, height):
            relative = f"images/{original.name}"
            shutil.copyfile(original, out_dir / relative)  # the original bytes (and EXIF), no re-encoding
        else:
            relative = f"images/{original.stem}.jpg"
            image.resize(size, Image.Resampling.BICUBIC).save(out_dir / relative, quality=95)
        stored[str(original)] = relative
    full = sample.mask == 1
    box = tight_box(full)
    if box is None:
        raise ValueError("empty mask")
    target = _scale_mask(full, size)
    if not target.any():
        raise ValueError(f"the mask vanishes when the image is scaled to {size}")
    # Box and points come from the full-resolution mask, mapped by the same per-axis scale as answers are
    # (`CoordTransform`): stored pixels = original pixels x scale.
    scale = np.array([size[0] / width, size[1] / height])
    points = np.asarray(inscribed_circle_points(full)) * scale
    return {
        "id": sample.id,
        "image": stored[str(original)],
        "query": sample.query,
        "mask_rle": encode_rle(target),
        "box": (np.asarray(box).reshape(2, 2) * scale).reshape(-1).tolist(),
        "points": points.tolist(),
        "meta": {**sample.meta, "original_size": [width, height], "scale": scale.tolist()},
    }


def main(argv: list[str] | None = None) -> Path:
    """`samr1 prepare refcocog-subset --data-root D --image-root I --out O [--n 3000 --seed 0 --max-side S]`;
    `argv` is what follows `prepare` on the command line."""
    parser = argparse.ArgumentParser(prog="samr1 prepare", description="Build training sets.")
    commands = parser.add_subparsers(dest="command", required=True)
    subset = commands.add_parser("refcocog-subset", help="SAM-R1's N random RefCOCOg train expressions")
    subset.add_argument("--data-root", required=True, help="folder holding <dataset>/refs(<split-by>).p")
    subset.add_argument("--image-root", required=True, help="COCO train2014 images")
    subset.add_argument("--out", required=True, help="output folder (train.jsonl, images/)")
    subset.add_argument("--n", type=int, default=3000)
    subset.add_argument("--seed", type=int, default=0)
    subset.add_argument(
        "--max-side",
        type=int,
        default=None,
        help="scale images down so the longer side is at most this many pixels, aspect ratio kept "
        "(default: copy the originals)",
    )
    subset.add_argument("--resize", type=int, default=None, help=argparse.SUPPRESS)
    subset.add_argument("--dataset", default="refcocog")
    subset.add_argument("--split-by", default="umd")
    subset.add_argument("--split", default="train")
    subset.add_argument("--on-error", choices=("error", "skip"), default="error")
    args = parser.parse_args(argv)
    if args.resize is not None:
        parser.error(
            "--resize was removed: it stretched every image to a square, so SAM segmented distorted images "
            "in training. The policy's 840 x 840 input is made at prompt time (model.image_size); use "
            "--max-side S only to cap the stored size (aspect ratio kept)."
        )
    path = prepare_refcocog_subset(
        args.data_root,
        args.image_root,
        args.out,
        n=args.n,
        seed=args.seed,
        max_side=args.max_side,
        dataset=args.dataset,
        split_by=args.split_by,
        split=args.split,
        on_error=args.on_error,
    )
    print(path)
    return path
