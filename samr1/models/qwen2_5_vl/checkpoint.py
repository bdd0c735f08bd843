"""Writing the trained policy as a plain Hugging Face directory (LoRA merged)."""

from __future__ import annotations

from pathlib import Path

from samr1.models.qwen2_5_vl.lora import is_peft


def save_pretrained(model, processor, out_dir: str | Path) -> Path:
    """Write `model` (LoRA merged into its weights) and `processor` as a `from_pretrained`-loadable directory.

    Returns the directory. A PEFT model is merged and unwrapped first; the merged model is what is saved.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plain = model.merge_and_unload() if is_peft(model) else model
    plain.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    return out
