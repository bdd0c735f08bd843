"""Synthetic shapes: the built-in default data. Seeded images of coloured shapes with referring queries.

Each image holds `min_shapes..max_shapes` shapes in distinct cells of a 3 x 3 grid (so they never overlap),
each of a different colour and a random kind and size, placed anywhere inside its cell; the target is one of
them and the query names its size, colour and kind ("the small green triangle"). The query says nothing about
where the shape is and the other shapes have other colours, so an answer must read both the query (which
shape) and the image (where it is): ignoring the image leaves a guess over the 9 cells, ignoring the query a
guess among the shapes. Masks are exact, boxes tight, points inside.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from samr1.datamodules.base import SegDataModule
from samr1.geometry import tight_box
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
SPLITS = {"train": 0, "val": 1, "test": 2}
POSITION_JITTER = 0.1


@dataclass(frozen=True)
class Shape:
    """One drawn shape: grid cell, colour, kind, size class, centre and radius in pixels."""

    row: int
    col: int
    colour: str
    kind: str
    large: bool
    cx: float
    cy: float
    r: float

    @property
    def size(self) -> str:
        return "large" if self.large else "small"

    @property
    def query(self) -> str:
        return f"the {self.size} {self.colour} {self.kind}"

    def mask(self, image_size: int) -> np.ndarray:
        """uint8 image_size x image_size, 1 inside the shape, exactly the pixels drawn in the image."""
        canvas = Image.new("L", (image_size, image_size), 0)
        draw_shape(ImageDraw.Draw(canvas), self.kind, self.cx, self.cy, self.r, 1)
        return np.asarray(canvas, dtype=np.uint8).copy()

    @property
    def points(self) -> list[tuple[float, float]]:
        # The centre (also an equilateral triangle's centroid) and one a third of the radius to its left, which
        # stays inside every kind (the triangle's inradius is r / 2).
        return [(self.cx, self.cy), (self.cx - self.r / 3, self.cy)]


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


def ramp_background(image_size: int, green: int) -> np.ndarray:
    """An RGB background whose red rises from left to right and blue from top to bottom (0 to 110): a patch's
    colour says where it is, so a tiny randomly initialised policy could read position from content as well as
    from its rotary position embeddings. (Not shown to help: with full position jitter the demo policy's
    warm-up loss fell no faster with the ramp; the smaller jitter is what made it fall faster.)"""
    ramp = np.linspace(0, 110, image_size)
    image = np.empty((image_size, image_size, 3), dtype=np.uint8)
    image[..., 0] = ramp[None, :].round()
    image[..., 1] = green
    image[..., 2] = ramp[:, None].round()
    return image


def make_scene(
    index: int, split: str, seed: int, image_size: int, min_shapes: int, max_shapes: int
) -> tuple[Image.Image, list[Shape], int]:
    """The `index`-th scene of `split`: (image, its shapes, the target's index), the same for the same inputs."""
    rng = random.Random(f"{seed}/{SPLITS[split]}/{index}")
    n = rng.randint(min_shapes, max_shapes)
    cells = rng.sample([(r, c) for r in range(3) for c in range(3)], n)
    colours = rng.sample(list(COLOURS), n)
    image = Image.fromarray(ramp_background(image_size, rng.randint(0, 60)))
    draw = ImageDraw.Draw(image)
    cell = image_size / 3
    shapes = []
    for (row, col), colour in zip(cells, colours):
        kind = rng.choice(KINDS)
        large = rng.random() < 0.5
        r = cell * (rng.uniform(0.34, 0.44) if large else rng.uniform(0.18, 0.26))
        cx = (col + 0.5) * cell + rng.uniform(-1, 1) * POSITION_JITTER * (cell / 2 - r)
        cy = (row + 0.5) * cell + rng.uniform(-1, 1) * POSITION_JITTER * (cell / 2 - r)
        draw_shape(draw, kind, cx, cy, r, COLOURS[colour])
        shapes.append(Shape(row, col, colour, kind, large, cx, cy, r))
    return image, shapes, rng.randrange(n)


def make_shapes_sample(
    index: int, split: str, seed: int, image_size: int, min_shapes: int, max_shapes: int
) -> SegSample:
    """The `index`-th sample of `split`: the same inputs always give the same image, mask and query."""
    image, shapes, target = make_scene(index, split, seed, image_size, min_shapes, max_shapes)
    shape = shapes[target]
    mask = shape.mask(image_size)
    return SegSample(
        id=f"shapes-{split}-{seed}-{index}",
        query=shape.query,
        image=image,
        mask=mask,
        box=tight_box(mask),
        points=shape.points,
        meta={
            "split": split,
            "colour": shape.colour,
            "kind": shape.kind,
            "size": shape.size,
            "cell": (shape.row, shape.col),
            "num_shapes": len(shapes),
        },
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
        if not 1 <= min_shapes <= max_shapes <= len(COLOURS):
            raise ValueError(
                f"need 1 <= min_shapes <= max_shapes <= {len(COLOURS)} (one colour per shape), "
                f"got {min_shapes}, {max_shapes}"
            )
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
        min_shapes: fewest shapes in an image (1..6).
        max_shapes: most shapes in an image (min_shapes..6, one colour each).
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
