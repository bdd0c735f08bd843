"""`samr1 prepare refcocog-subset`: SAM-R1's training set, N seeded random RefCOCOg train expressions.

Writes `<out>/train.jsonl` (the format JsonlSegDataset reads) and `<out>/images/`: each image once (copied, or
resized to resize x resize when `--resize` is given, as Seg-Zero and SAM-R1 train at 840 x 840), each sample's
mask as COCO RLE at the stored image's size (resized nearest-neighbour), and the tight box and GT points
(centres of the two largest inscribed circles) computed from that stored mask, so they agree with it exactly.
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


def _resize_mask(target: np.ndarray, resize: int | None) -> np.ndarray:
    if resize is None:
        return target
    # Nearest neighbour keeps the mask binary; PIL samples pixel centres (no half-pixel shift).
    image = Image.fromarray(target.astype(np.uint8))
    return np.asarray(image.resize((resize, resize), Image.Resampling.NEAREST)).astype(bool)


def prepare_refcocog_subset(
    data_root: str | Path,
    image_root: str | Path,
    out_dir: str | Path,
    n: int = 3000,
    seed: int = 0,
    resize: int | None = None,
    dataset: str = "refcocog",
    split_by: str = "umd",
    split: str = "train",
    on_error: OnError = "error",
) -> Path:
    """Writes N random expressions of the split to `<out_dir>/train.jsonl` and returns its path.

    The draw is a seeded permutation of the split's sentences (numpy `default_rng(seed)`), taken in order
    until N samples are written: under `on_error="skip"`, a broken sample is replaced by the next one, so the
    output still has N samples when the split has enough good ones. Same data + seed -> same file.
    """
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
                line = _line(source[int(index)], out_dir, stored, resize)
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


def _line(sample, out_dir: Path, stored: dict[str, str], resize: int | None) -> dict:
    original = Path(sample.image_path)
    # The dataset decoded the image (samr1.images: upright, RGB), so a truncated file failed before this.
    image = sample.load_image()
    width, height = image.size
    if str(original) not in stored:
        if resize is None:
            relative = f"images/{original.name}"
            shutil.copyfile(original, out_dir / relative)  # the original bytes (and EXIF), no re-encoding
        else:
            relative = f"images/{original.stem}.jpg"
            image.resize((resize, resize), Image.Resampling.BICUBIC).save(out_dir / relative, quality=95)
        stored[str(original)] = relative
    target = _resize_mask(sample.mask == 1, resize)
    box = tight_box(target)
    if box is None:
        raise ValueError(f"empty mask{' after resizing' if resize else ''}")
    return {
        "id": sample.id,
        "image": stored[str(original)],
        "query": sample.query,
        "mask_rle": encode_rle(target),
        "box": list(box),
        "points": [list(p) for p in inscribed_circle_points(target)],
        "meta": {**sample.meta, "original_size": [width, height], "resize": resize},
    }


def main(argv: list[str] | None = None) -> Path:
    """`samr1 prepare refcocog-subset --data-root D --image-root I --out O [--n 3000 --seed 0 --resize 840]`;
    `argv` is what follows `prepare` on the command line."""
    parser = argparse.ArgumentParser(prog="samr1 prepare", description="Build training sets.")
    commands = parser.add_subparsers(dest="command", required=True)
    subset = commands.add_parser("refcocog-subset", help="SAM-R1's N random RefCOCOg train expressions")
    subset.add_argument("--data-root", required=True, help="folder holding <dataset>/refs(<split-by>).p")
    subset.add_argument("--image-root", required=True, help="COCO train2014 images")
    subset.add_argument("--out", required=True, help="output folder (train.jsonl, images/)")
    subset.add_argument("--n", type=int, default=3000)
    subset.add_argument("--seed", type=int, default=0)
    subset.add_argument("--resize", type=int, default=None, help="square side, e.g. 840 (default: keep)")
    subset.add_argument("--dataset", default="refcocog")
    subset.add_argument("--split-by", default="umd")
    subset.add_argument("--split", default="train")
    subset.add_argument("--on-error", choices=("error", "skip"), default="error")
    args = parser.parse_args(argv)
    path = prepare_refcocog_subset(
        args.data_root,
        args.image_root,
        args.out,
        n=args.n,
        seed=args.seed,
        resize=args.resize,
        dataset=args.dataset,
        split_by=args.split_by,
        split=args.split,
        on_error=args.on_error,
    )
    print(path)
    return path
