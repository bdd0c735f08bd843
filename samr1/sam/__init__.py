"""SAM as a reward provider: one prediction call over two backends (segment-anything and SAM2)."""

from __future__ import annotations

from typing import Literal

import torch

from samr1.sam.architectures import SAM_ARCHITECTURES, build_sam_module, load_sam_checkpoint
from samr1.sam.cache import EmbeddingCache
from samr1.sam.predictor import SamEmbedding, SamPromptSegmenter, resolve_dtype
from samr1.sam.sam2 import Sam2PromptSegmenter

__all__ = [
    "SAM_ARCHITECTURES",
    "EmbeddingCache",
    "Sam2PromptSegmenter",
    "SamEmbedding",
    "SamPromptSegmenter",
    "build_sam",
    "build_sam_module",
    "load_sam_checkpoint",
    "resolve_dtype",
]


def build_sam(
    backend: Literal["segment_anything", "sam2"] = "segment_anything",
    model_type: str = "vit_h",
    checkpoint: str | None = None,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "float32",
    cache_size: int = 0,
):
    """A frozen segmenter with `predict(image, boxes, points, point_labels, multimask) -> (masks, scores)`.

    `segment_anything`: `checkpoint` is an official-format state dict (.pth) for `model_type` (vit_h, vit_l,
    vit_b, or vit_tiny for offline runs), loaded with `torch.load(weights_only=True)`; returns a
    `SamPromptSegmenter`. `sam2`: `checkpoint` is a transformers `Sam2Model` directory or hub id (loaded with
    `from_pretrained`; `model_type` is ignored); returns a `Sam2PromptSegmenter`. `cache_size` bounds the
    image-embedding LRU cache (0: off).
    """
    if checkpoint is None:
        raise ValueError(f"build_sam(backend={backend!r}) needs a checkpoint (model.sam_checkpoint)")
    if backend == "segment_anything":
        sam = load_sam_checkpoint(model_type, checkpoint)
        return SamPromptSegmenter(sam, device=device, dtype=dtype, cache_size=cache_size)
    if backend == "sam2":
        return Sam2PromptSegmenter.from_pretrained(
            checkpoint, device=device, dtype=dtype, cache_size=cache_size
        )
    raise ValueError(f"unknown SAM backend {backend!r}; choose 'segment_anything' or 'sam2'")


def __getattr__(name: str):
    if name == "build_tiny_sam2":  # an offline tool now (samr1.tools.tiny_sam2); kept for old imports
        from samr1.tools.tiny_sam2 import build_tiny_sam2

        return build_tiny_sam2
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
