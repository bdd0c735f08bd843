"""SAM2 through transformers (`Sam2Model` + `Sam2Processor`), behind the same call as SamPromptSegmenter.

The processor resizes the image to the model's square input and scales prompts by the same factors; the
model decodes all K prompts of one image against one set of image embeddings (`image_embeddings=`), and the
processor upsamples the kept low-resolution masks to the original size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from samr1.dtypes import resolve_dtype
from samr1.sam.base import PromptSegmenter
from samr1.sam.cache import EmbeddingCache


@dataclass
class Sam2Embedding:
    features: list[torch.Tensor]  # the multi-level image embeddings of Sam2Model.get_image_embeddings
    original_size: tuple[int, int]  # (H, W)


class Sam2PromptSegmenter(PromptSegmenter):
    """`predict(image, boxes, points, point_labels, multimask) -> (masks, scores)` with a frozen `Sam2Model`.

    Same conventions as `SamPromptSegmenter`: original pixels in, numpy bool masks [K, H, W] and float32
    scores [K] out, best of three with `multimask=True`, `embed` / `decode` halves and an optional LRU cache.
    The whole model runs in `dtype` (prompts are cast to it); scores and mask logits are read back as float32.
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        cache_size: int = 0,
    ) -> None:
        self.dtype = resolve_dtype(dtype)
        self.model = model.eval().requires_grad_(False).to(dtype=self.dtype)
        if device is not None:
            self.model.to(device)
        self.processor = processor
        self.cache: EmbeddingCache[Sam2Embedding] = EmbeddingCache(cache_size)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "float32",
        cache_size: int = 0,
    ) -> Sam2PromptSegmenter:
        from transformers import Sam2Model, Sam2Processor

        model = Sam2Model.from_pretrained(str(path))
        processor = Sam2Processor.from_pretrained(str(path))
        return cls(model, processor, device=device, dtype=dtype, cache_size=cache_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, image: np.ndarray) -> Sam2Embedding:
        inputs = self.processor(images=image, return_tensors="pt")
        pixel_values = inputs["pixel_values"].to(self.device, self.dtype)
        return Sam2Embedding(list(self.model.get_image_embeddings(pixel_values)), tuple(image.shape[:2]))

    def decode_prompts(
        self, embedding: Sam2Embedding, boxes, points, point_labels, multimask: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        k = len(boxes) if boxes is not None else len(points)
        h, w = embedding.original_size
        # One image, K prompts: the processor wants [image, prompt, ...] nesting and scales to its input size.
        prompts = self.processor(
            original_sizes=[[h, w]],
            input_boxes=None if boxes is None else torch.from_numpy(boxes[None]).float(),
            input_points=None if points is None else torch.from_numpy(points[None]).float(),
            input_labels=None if points is None else torch.from_numpy(point_labels[None]),
            return_tensors="pt",
        )
        kwargs = {}
        for name in ("input_boxes", "input_points"):
            if name in prompts:
                kwargs[name] = prompts[name].to(self.device, self.dtype)
        if "input_labels" in prompts:
            kwargs["input_labels"] = prompts["input_labels"].to(self.device)
        out = self.model(image_embeddings=embedding.features, multimask_output=multimask, **kwargs)
        iou = out.iou_scores[0].float()  # [K, C]
        low_res = out.pred_masks[0].float()  # [K, C, h, w]
        best = iou.argmax(dim=1)
        rows = torch.arange(k, device=iou.device)
        masks = self.processor.post_process_masks([low_res[rows, best].unsqueeze(1)], [[h, w]])[0]
        return masks[:, 0].cpu().numpy(), iou[rows, best].cpu().numpy()


def __getattr__(name: str):
    # The tiny SAM2 writer is an offline tool (samr1.tools.tiny_sam2); old imports from here still work.
    if name in ("tiny_sam2_config", "build_tiny_sam2"):
        from samr1.tools import tiny_sam2

        return getattr(tiny_sam2, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
