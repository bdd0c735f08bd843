"""Loading the policy and its processor from a Hugging Face directory or hub id, with clear failures."""

from __future__ import annotations

import re
from pathlib import Path

from samr1.dtypes import resolve_dtype

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def check_model_path(model_path: str) -> None:
    """Fail at start, naming the path, when `model_path` is neither a model directory nor a cached hub id."""
    path = Path(model_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"model_path {model_path!r} is a directory without config.json: {path / 'config.json'}"
            )
        return
    if path.exists():
        raise FileNotFoundError(
            f"model_path {model_path!r} is a file; point it at a Hugging Face model directory"
        )
    if not _HUB_ID.match(model_path):
        raise FileNotFoundError(f"model_path not found: {path}")
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.constants import HF_HUB_OFFLINE

    cached = try_to_load_from_cache(model_path, "config.json")
    if HF_HUB_OFFLINE and not isinstance(cached, str):
        raise FileNotFoundError(
            f"model_path {model_path!r} is not a directory and not in the local Hugging Face cache (offline mode); "
            "download it where there is network and point model_path at the directory"
        )


def load_policy(model_path: str, dtype: str = "float32", attn_implementation: str = "sdpa"):
    """A Qwen2.5-VL `ForConditionalGeneration` through `from_pretrained` (safetensors, no remote code)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    check_model_path(model_path)
    return Qwen2_5_VLForConditionalGeneration.from_pretrained(
        model_path, dtype=resolve_dtype(dtype), attn_implementation=attn_implementation, use_safetensors=True
    )


def load_processor(model_path: str):
    from transformers import AutoProcessor

    check_model_path(model_path)
    return AutoProcessor.from_pretrained(model_path)


def special_token_ids(tokenizer, model_vocab_size: int) -> tuple[list[int], list[int]]:
    """(eos ids, ids that must never be sampled): vision placeholders, im_start, and ids past the tokenizer."""
    vocab = tokenizer.get_vocab()
    eos = [vocab[t] for t in ("<|im_end|>", "<|endoftext|>") if t in vocab]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos:
        eos.append(tokenizer.eos_token_id)
    never = [
        "<|image_pad|>",
        "<|video_pad|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|vision_pad|>",
        "<|im_start|>",
    ]
    banned = [vocab[t] for t in never if t in vocab]
    banned += list(range(len(tokenizer), model_vocab_size))
    return eos, banned


def generation_defaults(model_path: str) -> dict[str, float]:
    """What the checkpoint's `generation_config.json` asks greedy decoding for, as `generate(do_sample=False)`
    applies it: {"repetition_penalty": ...} when the file sets one other than 1 (Qwen2.5-VL-Instruct: 1.05),
    else {}. Sampling settings (temperature, top_p, top_k) do not apply to greedy decoding and are not read."""
    from transformers import GenerationConfig

    try:
        config = GenerationConfig.from_pretrained(model_path)
    except (OSError, ValueError):  # no generation_config.json: generate() would use the library defaults
        return {}
    penalty = getattr(config, "repetition_penalty", None)
    return {} if penalty is None or float(penalty) == 1.0 else {"repetition_penalty": float(penalty)}
