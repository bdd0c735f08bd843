"""segment-anything model sizes by name: the three official ones and a tiny one for offline runs.

The official registry builds only vit_h / vit_l / vit_b at 1024 px; samr1 adds `vit_tiny` (64-dim encoder,
256 px) so that tests and the demo run a real `Sam` through the very same loader as an official checkpoint.
"""

from __future__ import annotations

from functools import partial

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer


def _sam(
    *,
    encoder_embed_dim: int,
    encoder_depth: int,
    encoder_num_heads: int,
    encoder_global_attn_indexes: tuple[int, ...],
    image_size: int = 1024,
    prompt_embed_dim: int = 256,
    window_size: int = 14,
    decoder_depth: int = 2,
    decoder_mlp_dim: int = 2048,
    decoder_heads: int = 8,
    iou_head_hidden_dim: int = 256,
    mask_in_chans: int = 16,
) -> Sam:
    patch_size = 16
    grid = image_size // patch_size
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=encoder_depth,
            embed_dim=encoder_embed_dim,
            img_size=image_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=encoder_num_heads,
            patch_size=patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=encoder_global_attn_indexes,
            window_size=window_size,
            out_chans=prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(image_size, image_size),
            mask_in_chans=mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=decoder_depth,
                embedding_dim=prompt_embed_dim,
                mlp_dim=decoder_mlp_dim,
                num_heads=decoder_heads,
            ),
            transformer_dim=prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=iou_head_hidden_dim,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


SAM_ARCHITECTURES = {
    "vit_h": partial(
        _sam,
        encoder_embed_dim=1280,
        encoder_depth=32,
        encoder_num_heads=16,
        encoder_global_attn_indexes=(7, 15, 23, 31),
    ),
    "vit_l": partial(
        _sam,
        encoder_embed_dim=1024,
        encoder_depth=24,
        encoder_num_heads=16,
        encoder_global_attn_indexes=(5, 11, 17, 23),
    ),
    "vit_b": partial(
        _sam,
        encoder_embed_dim=768,
        encoder_depth=12,
        encoder_num_heads=12,
        encoder_global_attn_indexes=(2, 5, 8, 11),
    ),
    # Offline tiny SAM: same modules, small widths. About 0.2M parameters; encodes a 256 px image in milliseconds.
    "vit_tiny": partial(
        _sam,
        encoder_embed_dim=64,
        encoder_depth=2,
        encoder_num_heads=2,
        encoder_global_attn_indexes=(1,),
        image_size=256,
        prompt_embed_dim=32,
        window_size=4,
        decoder_mlp_dim=64,
        decoder_heads=2,
        iou_head_hidden_dim=32,
    ),
}


def build_sam_module(model_type: str) -> Sam:
    """An uninitialised-weights `Sam` of the named size (weights come from `load_sam_checkpoint`)."""
    if model_type not in SAM_ARCHITECTURES:
        raise ValueError(f"unknown SAM model_type {model_type!r}; choose one of {sorted(SAM_ARCHITECTURES)}")
    return SAM_ARCHITECTURES[model_type]()


def load_sam_checkpoint(model_type: str, checkpoint: str) -> Sam:
    """Build `model_type` and load an official-format state dict safely (`weights_only=True`)."""
    from pathlib import Path

    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"SAM checkpoint not found: {path}")
    sam = build_sam_module(model_type)
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        sam.load_state_dict(state)
    except RuntimeError:
        # The full mismatch list runs to thousands of keys; say which sizes the file fits instead.
        matches = matching_model_types(state)
        hint = (
            f"it fits model_type {' or '.join(map(repr, matches))}"
            if matches
            else "it fits no known model_type"
        )
        raise ValueError(
            f"SAM checkpoint {path} does not match sam_model_type {model_type!r}: {hint} "
            f"(known: {sorted(SAM_ARCHITECTURES)})"
        ) from None
    return sam.eval()


def matching_model_types(state: dict) -> list[str]:
    """The SAM sizes whose image encoder has the width and depth of the state dict `state`."""
    weight = state.get("image_encoder.patch_embed.proj.weight")
    if not isinstance(weight, torch.Tensor):
        return []
    blocks = {key.split(".")[2] for key in state if key.startswith("image_encoder.blocks.")}
    found = []
    for name, build in SAM_ARCHITECTURES.items():
        size = build.keywords
        if size["encoder_embed_dim"] == weight.shape[0] and size["encoder_depth"] == len(blocks):
            found.append(name)
    return found
