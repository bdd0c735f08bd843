"""LoRA adapters on the language model (peft); the reference is then the policy with adapters disabled."""

from __future__ import annotations

# The language model's projections; the vision tower (under `visual`) is left out on purpose.
LANGUAGE_LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def add_lora(model, rank: int, alpha: int, dropout: float, target_modules: str = LANGUAGE_LORA_TARGETS):
    """Wrap `model` with LoRA adapters of `rank` on the language model; base weights are frozen."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules)
    return get_peft_model(model, config)


def is_peft(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "merge_and_unload")
