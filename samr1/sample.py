"""The one sample type every dataset yields and every reward and metric reads, and its coordinate transform."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from samr1.images import load_image, to_rgb


@dataclass(frozen=True)
class CoordTransform:
    """Maps original-image pixels to the model's input image (and back) by an axis-aligned scale.

    Qwen2.5-VL sees the image resized to `model_size` (width, height, multiples of 28); the answers it writes
    are in that space. Rewards and evaluation map them back to `original_size` with `to_original`.
    """

    original_size: tuple[int, int]  # (width, height)
    model_size: tuple[int, int]  # (width, height)

    @property
    def scale(self) -> tuple[float, float]:
        return (self.model_size[0] / self.original_size[0], self.model_size[1] / self.original_size[1])

    def to_model(self, xy: np.ndarray | list | tuple) -> np.ndarray:
        """Original pixels -> model input pixels; `xy` is [..., 2] points or [..., 4] boxes (x1, y1, x2, y2)."""
        return np.asarray(xy, dtype=np.float64) * self._factors(np.shape(xy), inverse=False)

    def to_original(self, xy: np.ndarray | list | tuple) -> np.ndarray:
        """Model input pixels -> original pixels; `xy` is [..., 2] points or [..., 4] boxes."""
        return np.asarray(xy, dtype=np.float64) * self._factors(np.shape(xy), inverse=True)

    def model_to_reference(self, xy: np.ndarray | list | tuple, size: tuple[int, int]) -> np.ndarray:
        """Model input pixels -> the reference space where the original image is stretched to `size`
        (Seg-Zero's 840 x 840, where its 10 px and 100 px thresholds are defined). When the model already
        sees `size`, the answer is returned as written (no round trip through original pixels)."""
        if tuple(self.model_size) == tuple(size):
            return np.asarray(xy, dtype=np.float64)
        return self.original_to_reference(self.to_original(xy), size)

    def original_to_reference(self, xy: np.ndarray | list | tuple, size: tuple[int, int]) -> np.ndarray:
        """Original pixels -> the reference space of `size` (see `model_to_reference`)."""
        if tuple(self.model_size) == tuple(size):
            return self.to_model(xy)
        reference = CoordTransform(self.original_size, (int(size[0]), int(size[1])))
        return reference.to_model(xy)

    def _factors(self, shape: tuple[int, ...], inverse: bool) -> np.ndarray:
        sx, sy = self.scale
        if inverse:
            sx, sy = 1.0 / sx, 1.0 / sy
        if not shape or shape[-1] not in (2, 4):
            raise ValueError(f"expected [..., 2] points or [..., 4] boxes, got shape {shape}")
        return np.array([sx, sy] * (shape[-1] // 2))


@dataclass
class SegSample:
    """A referring/reasoning segmentation sample in original image pixels.

    `mask` is uint8 H x W: 0 background, 1 target, 255 ignored (LISA's convention). `box` is (x1, y1, x2, y2)
    and `points` a list of (x, y), both in original pixels. `transform` is set when the sample is turned into a
    prompt, so rewards can map the model's answer back to these pixels.
    """

    id: str
    query: str
    mask: np.ndarray | None = None
    image_path: str | None = None
    image: Image.Image | None = None
    box: tuple[float, float, float, float] | None = None
    points: list[tuple[float, float]] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    transform: CoordTransform | None = None

    def __post_init__(self) -> None:
        if self.image is None and self.image_path is None:
            raise ValueError(f"sample {self.id!r} has neither an image nor an image_path")
        if self.mask is not None and (self.mask.ndim != 2 or self.mask.dtype != np.uint8):
            raise ValueError(
                f"sample {self.id!r}: mask must be a uint8 H x W array, got {self.mask.dtype} {self.mask.shape}"
            )

    def load_image(self) -> Image.Image:
        """The image as RGB. In-memory images are returned as they are (converted by `samr1.images.to_rgb`
        if not RGB); files are read on each call with `samr1.images.load_image` (EXIF orientation applied,
        every mode scaled to 8-bit RGB), the reader every dataset uses."""
        if self.image is not None:
            return to_rgb(self.image)
        try:
            return load_image(Path(self.image_path))  # type: ignore[arg-type]
        except ValueError as err:
            raise ValueError(f"sample {self.id!r}: {err}") from err

    def to_original(self, xy: np.ndarray | list | tuple) -> np.ndarray:
        """Model-space points [..., 2] or boxes [..., 4] -> original pixels (identity without a transform)."""
        xy = np.asarray(xy, dtype=np.float64)
        return xy if self.transform is None else self.transform.to_original(xy)

    def to_model(self, xy: np.ndarray | list | tuple) -> np.ndarray:
        """Original pixels -> the model's input space (identity without a transform)."""
        xy = np.asarray(xy, dtype=np.float64)
        return xy if self.transform is None else self.transform.to_model(xy)

    def model_to_reference(self, xy: np.ndarray | list | tuple, size: tuple[int, int] | None) -> np.ndarray:
        """Model-space coordinates -> the `size` reference space (None, or no transform: unchanged)."""
        xy = np.asarray(xy, dtype=np.float64)
        return xy if size is None or self.transform is None else self.transform.model_to_reference(xy, size)

    def original_to_reference(
        self, xy: np.ndarray | list | tuple, size: tuple[int, int] | None
    ) -> np.ndarray:
        """Original pixels -> the `size` reference space (None: the model's input space, as `to_model`)."""
        if size is None or self.transform is None:
            return self.to_model(xy)
        return self.transform.original_to_reference(np.asarray(xy, dtype=np.float64), size)

    @property
    def target(self) -> np.ndarray | None:
        """Boolean target pixels (mask == 1), or None when the sample has no mask."""
        return None if self.mask is None else self.mask == 1
