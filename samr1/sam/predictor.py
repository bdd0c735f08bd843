"""SamPromptSegmenter: a frozen segment-anything `Sam` that encodes an image once and decodes K prompts at once.

It reproduces `segment_anything.SamPredictor` step for step (same resize, coordinate transform, prompt encoder,
decoder and upsampling), so its masks equal SamPredictor's prompt by prompt, pixel for pixel, in float32. The
difference is the batching: `SamPredictor.predict` takes one prompt per call, and the usual reward code calls
`set_image` per completion, re-encoding the same image G times.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide

from samr1.dtypes import resolve_dtype
from samr1.sam.base import PromptSegmenter, as_rgb_uint8, check_prompts  # noqa: F401 (re-exported)
from samr1.sam.cache import EmbeddingCache


@dataclass
class SamEmbedding:
    """One encoded image: what decoding needs besides the prompts."""

    features: torch.Tensor  # [1, C, h, w], float32, on the model's device
    original_size: tuple[int, int]  # (H, W) of the image given to `embed`
    input_size: tuple[int, int]  # (H, W) after the longest-side resize, before padding


class SamPromptSegmenter(PromptSegmenter):
    """Prompted segmentation with a frozen segment-anything model (public contract).

    `predict(image, boxes, points, point_labels, multimask)`: `image` H x W x 3 uint8 RGB (numpy or PIL);
    `boxes` [K, 4] (x1, y1, x2, y2), `points` [K, P, 2] (x, y), `point_labels` [K, P] (1 foreground,
    0 background; all 1 when omitted), all in original pixels, numpy or tensor. Returns `(masks, scores)` as
    numpy: bool masks [K, H, W] at the image's resolution and float32 scores [K] (SAM's predicted IoU). With
    `multimask=True` each prompt keeps the best-scoring of SAM's three masks.

    `embed` + `decode` split the two halves so a caller can decode prompts of different layouts against one
    encoding; `key` names the image for the optional LRU cache (`cache_size` entries; 0 disables it).

    The module is put in eval mode with gradients off and moved to `device`; with `dtype` other than float32
    only the image encoder (where the time goes) runs in that dtype, and its output is cast back to float32 so
    that prompt encoding, decoding and upsampling stay exact.
    """

    def __init__(
        self,
        sam: Sam,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        cache_size: int = 0,
        postprocess_chunk: int = 16,
    ) -> None:
        self.sam = sam.eval().requires_grad_(False)
        if device is not None:
            self.sam.to(device)
        self.dtype = resolve_dtype(dtype)
        self.sam.image_encoder.to(self.dtype)
        self.transform = ResizeLongestSide(self.sam.image_encoder.img_size)
        self.cache: EmbeddingCache[SamEmbedding] = EmbeddingCache(cache_size)
        # Upsampled float masks cost K x 1024 x 1024 x 4 bytes; chunking bounds that without changing results.
        self.postprocess_chunk = max(1, int(postprocess_chunk))

    @property
    def device(self) -> torch.device:
        return self.sam.device

    def encode(self, image: np.ndarray) -> SamEmbedding:
        if self.sam.image_format != "RGB":
            image = image[..., ::-1]
        # The same steps as SamPredictor.set_image / set_torch_image.
        resized = self.transform.apply_image(image)
        x = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None, :, :, :]
        x = self.sam.preprocess(x)
        features = self.sam.image_encoder(x.to(self.dtype)).float()
        return SamEmbedding(features, tuple(image.shape[:2]), tuple(resized.shape[:2]))

    def decode_prompts(
        self, embedding: SamEmbedding, boxes, points, point_labels, multimask: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        k = len(boxes) if boxes is not None else len(points)
        # Coordinates go through the numpy transform in float64, then float32, exactly as SamPredictor.predict.
        point_input = None
        if points is not None:
            coords = self.transform.apply_coords(points, embedding.original_size)
            point_input = (
                torch.as_tensor(coords, dtype=torch.float, device=self.device),
                torch.as_tensor(point_labels, dtype=torch.int, device=self.device),
            )
        box_input = None
        if boxes is not None:
            box_input = torch.as_tensor(
                self.transform.apply_boxes(boxes, embedding.original_size),
                dtype=torch.float,
                device=self.device,
            )
        sparse, dense = self.sam.prompt_encoder(points=point_input, boxes=box_input, masks=None)
        low_res, iou = self.sam.mask_decoder(
            image_embeddings=embedding.features,
            image_pe=self.sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
        )
        # Pick the best of three before upsampling: upsampling is per mask, so this only saves work.
        best = iou.argmax(dim=1) if multimask else torch.zeros(k, dtype=torch.long, device=iou.device)
        rows = torch.arange(k, device=iou.device)
        low_res = low_res[rows, best].unsqueeze(1)
        scores = iou[rows, best]
        masks = torch.cat(
            [
                self.sam.postprocess_masks(chunk, embedding.input_size, embedding.original_size)
                > self.sam.mask_threshold
                for chunk in low_res.split(self.postprocess_chunk)
            ]
        )
        return masks[:, 0].cpu().numpy(), scores.float().cpu().numpy()
