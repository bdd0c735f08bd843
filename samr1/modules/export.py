"""LoRA adapters on the language model, and writing the trained policy as a plain Hugging Face directory."""

from __future__ import annotations

from pathlib import Path

import torch

# The language model's projections; the vision tower (under `visual`) is left out on purpose.
LANGUAGE_LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def add_lora(model, rank: int, alpha: int, dropout: float, target_modules: str = LANGUAGE_LORA_TARGETS):
    """Wrap `model` with LoRA adapters of `rank` on the language model; base weights are frozen."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules)
    return get_peft_model(model, config)


def is_peft(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "merge_and_unload")


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


def export_checkpoint(ckpt_path: str | Path, out_dir: str | Path) -> Path:
    """Load a samr1 Lightning checkpoint (safely, `weights_only=True`) and write its policy to `out_dir`."""
    from samr1.modules.policy import GRPOModule

    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    hparams = {k: v for k, v in checkpoint["hyper_parameters"].items() if not k.startswith("_")}
    hparams["sam_checkpoint"] = None  # SAM is not part of the policy
    module = GRPOModule(**hparams)
    module.configure_model()
    module.load_state_dict(checkpoint["state_dict"])
    return save_pretrained(module.policy, module.processor, out_dir)
