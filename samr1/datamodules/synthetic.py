"""Synthetic shapes: the built-in default data. Seeded images of coloured shapes with referring queries.

Each image holds `min_shapes..max_shapes` shapes in distinct cells of a 3 x 3 grid (so they never overlap),
each a unique (colour, kind) pair; the target is one of them and the query names its size, colour, kind and
position ("the small green triangle at the top left"). Masks are exact, boxes tight, points inside.
"""

from __future__ import annotations

import math
import random

import numpy as np
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from samr1.datamodules.base import SegDataModule
from samr1.sample import SegSample

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
    "purple": (150, 60, 190),
    "orange": (240, 140, 30),
}
KINDS = ("circle", "square", "triangle")
ROWS = ("top", "middle", "bottom")
COLS = ("left", "centre", "right")
SPLITS = {"train": 0, "val": 1, "test": 2}


def _position(row: int, col: int) -> str:
    if (row, col) == (1, 1):
        return "centre"
    if row == 1:
        return f"middle {COLS[col]}"
    if col == 1:
        return ROWS[row]
    return f"{ROWS[row]} {COLS[col]}"


def _polygon(kind: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    if kind == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if kind == "triangle":
        return [
            (cx + r * math.cos(a), cy + r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)
        ]
    return None


def draw_shape(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, r: float, fill) -> None:
    poly = _polygon(kind, cx, cy, r)
    if poly is None:
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon(poly, fill=fill)


def make_shapes_sample(
    index: int, split: str, seed: int, image_size: int, min_shapes: int, max_shapes: int
) -> SegSample:
    """The `index`-th sample of `split`: the same inputs always give the same image, mask and query."""
    rng = random.Random(f"{seed}/{SPLITS[split]}/{index}")
    n = rng.randint(min_shapes, max_shapes)
    cells = rng.sample([(r, c) for r in range(3) for c in range(3)], n)
    pairs = rng.sample([(col, kind) for col in COLOURS for kind in KINDS], n)
    background = tuple(rng.randint(0, 60) for _ in range(3))
    image = Image.new("RGB", (image_size, image_size), background)
    draw = ImageDraw.Draw(image)
    cell = image_size / 3
    shapes = []
    for (row, col), (colour, kind) in zip(cells, pairs):
        large = rng.random() < 0.5
        r = cell * (rng.uniform(0.34, 0.44) if large else rng.uniform(0.18, 0.26))
        cx = (col + 0.5) * cell + rng.uniform(-1, 1) * (cell / 2 - r)
        cy = (row + 0.5) * cell + rng.uniform(-1, 1) * (cell / 2 - r)
        draw_shape(draw, kind, cx, cy, r, COLOURS[colour])
        shapes.append((row, col, colour, kind, large, cx, cy, r))
    row, col, colour, kind, large, cx, cy, r = shapes[rng.randrange(n)]
    canvas = Image.new("L", (image_size, image_size), 0)
    draw_shape(ImageDraw.Draw(canvas), kind, cx, cy, r, 1)
    mask = np.asarray(canvas, dtype=np.uint8).copy()
    ys, xs = np.nonzero(mask)
    box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
    # Two interior points: the centre (also an equilateral triangle's centroid) and one a third of the radius
    # to its left, which stays inside every kind (the triangle's inradius is r / 2).
    points = [(cx, cy), (cx - r / 3, cy)]
    size = "large" if large else "small"
    return SegSample(
        id=f"shapes-{split}-{seed}-{index}",
        query=f"the {size} {colour} {kind} at the {_position(row, col)}",
        image=image,
        mask=mask,
        box=box,
        points=points,
        meta={"split": split, "colour": colour, "kind": kind, "size": size, "num_shapes": n},
    )


class SyntheticShapesDataset(Dataset):
    """`length` seeded shape samples of `split`; sample i is generated on access, identically every time."""

    def __init__(
        self,
        split: str = "train",
        length: int = 64,
        seed: int = 0,
        image_size: int = 112,
        min_shapes: int = 2,
        max_shapes: int = 4,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {sorted(SPLITS)}")
        if not 1 <= min_shapes <= max_shapes <= 9:
            raise ValueError(f"need 1 <= min_shapes <= max_shapes <= 9, got {min_shapes}, {max_shapes}")
        self.split, self.length, self.seed = split, length, seed
        self.image_size, self.min_shapes, self.max_shapes = image_size, min_shapes, max_shapes

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> SegSample:
        if not 0 <= index < self.length:
            raise IndexError(index)
        return make_shapes_sample(
            index, self.split, self.seed, self.image_size, self.min_shapes, self.max_shapes
        )


class SyntheticShapesDataModule(SegDataModule):
    """The embedded default data: seeded synthetic shapes, no files needed.

    `seed` (a loader option of `SegDataModule`, like the splits, batch_size, eval_batch_size, num_workers and
    on_error) also seeds the generated images.

    Args:
        num_train: samples in the train split.
        num_val: samples in the val split.
        num_test: samples in the test split.
        image_size: side of the square images, in pixels.
        min_shapes: fewest shapes in an image (1..9).
        max_shapes: most shapes in an image (min_shapes..9).
    """

    def __init__(
        self,
        num_train: int = 256,
        num_val: int = 16,
        num_test: int = 32,
        image_size: int = 112,
        min_shapes: int = 2,
        max_shapes: int = 4,
        **loader,
    ) -> None:
        super().__init__(**loader)
        self.lengths = {"train": num_train, "val": num_val, "test": num_test}
        self.image_size, self.min_shapes, self.max_shapes = image_size, min_shapes, max_shapes

    def build_dataset(self, split: str) -> SyntheticShapesDataset:
        return SyntheticShapesDataset(
            split, self.lengths[split], self.seed, self.image_size, self.min_shapes, self.max_shapes
        )
