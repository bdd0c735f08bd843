"""The prediction call every SAM backend shares: encode an image once (cached by key), decode K prompts."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch

from samr1.sam.cache import EmbeddingCache


class PromptSegmenter(ABC):
    """Backends implement `encode(image)` and `decode(embedding, boxes, points, point_labels, multimask)`.

    `embed` adds the optional LRU cache (`self.cache`, keyed by the caller's image key) in front of `encode`;
    `predict` is `decode(embed(image))`, so each call encodes the image at most once for all its prompts.
    """

    cache: EmbeddingCache

    @abstractmethod
    def encode(self, image: np.ndarray) -> Any:
        """Image embedding of an H x W x 3 uint8 RGB array (with its `original_size`)."""

    @abstractmethod
    def decode(
        self,
        embedding: Any,
        boxes: Any = None,
        points: Any = None,
        point_labels: Any = None,
        multimask: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Bool masks [K, H, W] at the original resolution and float32 scores [K]."""

    @torch.inference_mode()
    def embed(self, image: Any, key: Any = None) -> Any:
        image = as_rgb_uint8(image)
        cached = self.cache.get(key)
        if cached is not None and cached.original_size == image.shape[:2]:
            return cached
        embedding = self.encode(image)
        self.cache.put(key, embedding)
        return embedding

    def predict(
        self,
        image: Any,
        boxes: Any = None,
        points: Any = None,
        point_labels: Any = None,
        multimask: bool = False,
        key: Any = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Encode `image` once (or take it from the cache under `key`) and decode all K prompts in one batch."""
        return self.decode(self.embed(image, key=key), boxes, points, point_labels, multimask)


def as_rgb_uint8(image: Any) -> np.ndarray:
    """numpy H x W x 3 uint8 from a numpy array, tensor or PIL image (grey or RGBA converted)."""
    if hasattr(image, "convert") and not isinstance(image, np.ndarray):  # PIL
        image = image.convert("RGB")
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"expected an H x W x 3 RGB image, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    image = np.ascontiguousarray(image[:, :, :3])
    # np.asarray(PIL image) is read-only, which torch.from_numpy warns about downstream.
    return image if image.flags.writeable else image.copy()
