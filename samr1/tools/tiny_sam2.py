"""A tiny, randomly initialised SAM2 (transformers `Sam2Model`) written offline for tests and demos."""

from __future__ import annotations

from pathlib import Path

import torch


def tiny_sam2_config(image_size: int = 256):
    """A ~0.35M-parameter SAM2 (Hiera backbone shrunk) that runs in tens of milliseconds on a CPU.

    A global-attention block must not open a pooling stage (its window size is 0 there), hence
    `blocks_per_stage` [1, 1, 2, 1] with the global block at index 3.
    """
    from transformers import Sam2Config

    stages = [16, 32, 64, 128]
    s = image_size
    return Sam2Config(
        vision_config={
            "backbone_config": {
                "model_type": "sam2_hiera_det_model",
                "hidden_size": stages[0],
                "image_size": [s, s],
                "blocks_per_stage": [1, 1, 2, 1],
                "embed_dim_per_stage": stages,
                "num_attention_heads_per_stage": [1, 1, 2, 2],
                "window_size_per_stage": [8, 4, 4, 4],
                "global_attention_blocks": [3],
                "window_positional_embedding_background_size": [4, 4],
            },
            "backbone_channel_list": stages[::-1],
            "backbone_feature_sizes": [[s // 4, s // 4], [s // 8, s // 8], [s // 16, s // 16]],
            "fpn_hidden_size": 32,
        },
        prompt_encoder_config={"hidden_size": 32, "image_size": s, "patch_size": 16},
        mask_decoder_config={
            "hidden_size": 32,
            "mlp_dim": 64,
            "num_attention_heads": 2,
            "iou_head_hidden_dim": 32,
        },
    )


def build_tiny_sam2(out_dir: str | Path, seed: int = 0, image_size: int = 256) -> Path:
    """Write a randomly initialised tiny SAM2 (model + processor) loadable with `from_pretrained`."""
    from transformers import Sam2Model, Sam2Processor
    from transformers.models.sam2.image_processing_sam2 import Sam2ImageProcessor

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    Sam2Model(tiny_sam2_config(image_size)).save_pretrained(out)
    image_processor = Sam2ImageProcessor(
        size={"height": image_size, "width": image_size},
        mask_size={"height": image_size // 4, "width": image_size // 4},
    )
    Sam2Processor(image_processor=image_processor, target_size=image_size).save_pretrained(out)
    return out
