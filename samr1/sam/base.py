"""The prediction call every SAM backend shares: encode an image once (cached by key), decode K prompts."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch

from samr1.sam.cache import EmbeddingCache


class PromptSegmenter(ABC):
    """Backends implement `encode(image)` and `decode_prompts(embedding, boxes, points, point_labels, multimask)`.

    `embed` adds the optional LRU cache (`self.cache`, keyed by the caller's image key) in front of `encode`;
    `predict` is `decode(embed(image))`, so each call encodes the image at most once for all its prompts.
    """

    cache: EmbeddingCache

    @abstractmethod
    def encode(self, image: np.ndarray) -> Any:
        """Image embedding of an H x W x 3 uint8 RGB array (with its `original_size`)."""

    @abstractmethod
    def decode_prompts(
        self, embedding: Any, boxes: Any, points: Any, point_labels: Any, multimask: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """`decode` for K >= 1 prompts already checked by `check_prompts`."""

    @torch.inference_mode()
    def decode(
        self,
        embedding: Any,
        boxes: Any = None,
        points: Any = None,
        point_labels: Any = None,
        multimask: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Bool masks [K, H, W] at the original resolution and float32 scores [K]."""
        boxes, points, point_labels = check_prompts(boxes, points, point_labels)
        if len(boxes if boxes is not None else points) == 0:
            h, w = embedding.original_size
            return np.zeros((0, h, w), dtype=bool), np.zeros(0, dtype=np.float32)
        return self.decode_prompts(embedding, boxes, points, point_labels, multimask)

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


def check_prompts(boxes: Any, points: Any, point_labels: Any) -> tuple[Any, Any, Any]:
    """Prompts as float64 numpy boxes [K, 4], points [K, P, 2] and int labels [K, P] (ones when omitted)."""
    if boxes is None and points is None:
        raise ValueError("give boxes [K, 4] and/or points [K, P, 2]")
    if boxes is not None:
        boxes = _numpy(boxes, np.float64)
        if boxes.ndim == 1:
            boxes = boxes[None]
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"boxes must be [K, 4], got shape {boxes.shape}")
    if points is not None:
        points = _numpy(points, np.float64)
        if points.ndim != 3 or points.shape[2] != 2:
            raise ValueError(
                f"points must be [K, P, 2] (one row of P points per prompt), got shape {points.shape}"
            )
        if point_labels is None:
            point_labels = np.ones(points.shape[:2], dtype=np.int64)
        point_labels = _numpy(point_labels, np.int64)
        if point_labels.shape != points.shape[:2]:
            raise ValueError(f"point_labels must be [K, P] = {points.shape[:2]}, got {point_labels.shape}")
        if boxes is not None and len(boxes) != len(points):
            raise ValueError(
                f"{len(boxes)} boxes but {len(points)} point prompts; give one of each per prompt"
            )
    return boxes, points, point_labels


def _numpy(x: Any, dtype) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)
