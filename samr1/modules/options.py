"""Range checks of GRPOModule's options, run when the module is built: a bad value fails at once, by name.

Pure functions of the option values, so they are tested without a model and stay in one place.
`check_module_options` runs in `GRPOModule.__init__`; `check_stage_options` runs in `setup(stage)` for what
depends on the stage (training needs sampling). `apply_optimizer_options` makes a resumed fit use the
configured optimiser settings instead of the ones stored in the checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from samr1.modules.prompting import PATCH_FACTOR

_CHOICES = {
    "lr_schedule": ("constant", "cosine", "linear"),
    "aggregation": ("token", "sequence", "fixed"),
    "importance_level": ("token", "sequence"),
    "advantage_scale": ("group", "batch", "none"),
    "param_dtype": ("float32", "bfloat16", "float16"),
    "compute_dtype": ("float32", "bfloat16", "float16"),
    "dtype": (None, "float32", "bfloat16", "float16"),  # deprecated alias of compute_dtype; None: unset
    "sam_backend": ("segment_anything", "sam2"),
    "image_resample": ("bicubic", "bilinear"),
}


_INTEGER_MINIMUM = {
    "group_size": 2,  # group-relative advantages compare at least two completions
    "max_new_tokens": 1,
    "decode_check_every": 1,
    "max_resample_rounds": 0,
    "eval_max_new_tokens": 1,
    "num_iterations": 1,
    "mini_batch_size": 1,
    "micro_batch_size": 1,
    "warmup_steps": 0,
    "lora_rank": 0,
    "lora_alpha": 1,
    "sam_cache_size": 0,
    "min_pixels": 1,
    "max_pixels": 1,
}
_OPTIONAL = {
    "eval_max_new_tokens",
    "mini_batch_size",
    "grad_clip",
    "kl_clamp",
    "eval_repetition_penalty",
}  # None means "use the default rule"
_REAL_RANGES = {
    # Training samples at this temperature; 0 (greedy) is refused in fit by `check_stage_options`.
    "temperature": (lambda v: v >= 0, "must be >= 0"),
    "top_p": (lambda v: 0 < v <= 1, "must lie in (0, 1]"),
    "learning_rate": (lambda v: v >= 0, "must be >= 0"),
    "weight_decay": (lambda v: v >= 0, "must be >= 0"),
    "grad_clip": (lambda v: v > 0, "must be > 0 (or null: no clipping)"),
    "clip_low": (
        lambda v: 0 <= v < 1,
        "must lie in [0, 1) (the ratio's lower bound 1 - clip_low stays positive)",
    ),
    "clip_high": (lambda v: v >= 0, "must be >= 0"),
    "kl_coef": (lambda v: v >= 0, "must be >= 0"),
    "kl_clamp": (lambda v: v > 0, "must be > 0 (or null: no clamp)"),
    "eval_repetition_penalty": (lambda v: v > 0, "must be > 0 (or null: the checkpoint's own setting)"),
    "entropy_coef": (lambda v: True, "must be a finite number"),
    "lora_dropout": (lambda v: 0 <= v < 1, "must lie in [0, 1)"),
}


class OptionError(ValueError):
    """An option outside its valid range; the message starts with the option's name."""


def check_module_options(options: Mapping[str, Any]) -> None:
    """Raise `OptionError` naming the first option of `options` (GRPOModule's arguments) out of range."""
    o = dict(options)
    for name, low in _INTEGER_MINIMUM.items():
        value = o.get(name)
        if (value is None and name in _OPTIONAL) or (name == "lora_alpha" and o.get("lora_rank", 0) == 0):
            continue
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
            raise OptionError(f"{name} must be an integer >= {low}, got {value!r}")
    if o.get("decode_compile") and not o.get("decode_static_cache"):
        raise OptionError("decode_compile needs decode_static_cache: true (fixed shapes to compile)")
    if o["max_pixels"] < o["min_pixels"]:
        raise OptionError(f"max_pixels must be >= min_pixels ({o['min_pixels']}), got {o['max_pixels']!r}")
    _check_image_size(o)
    for name, (test, rule) in _REAL_RANGES.items():
        value = o.get(name)
        if value is None and name in _OPTIONAL:
            continue
        if name.startswith("lora_") and o.get("lora_rank", 0) == 0:
            continue  # LoRA is off: its settings are unused
        real = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not (real and test(value)):
            raise OptionError(f"{name} {rule}, got {value!r}")
    betas = o.get("adam_betas")
    if not (isinstance(betas, (list, tuple)) and len(betas) == 2 and all(_unit_interval(b) for b in betas)):
        raise OptionError(f"adam_betas must be two numbers in [0, 1), got {betas!r}")
    for name, choices in _CHOICES.items():
        if name in o and o[name] not in choices:
            named = [c for c in choices if c is not None]
            raise OptionError(f"{name} must be one of {named}, got {o[name]!r}")
    if o.get("sam_checkpoint") is not None and o.get("sam_backend") == "segment_anything":
        from samr1.sam.architectures import SAM_ARCHITECTURES

        if o.get("sam_model_type") not in SAM_ARCHITECTURES:
            raise OptionError(
                f"sam_model_type must be one of {sorted(SAM_ARCHITECTURES)}, got {o.get('sam_model_type')!r}"
            )


def _unit_interval(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value < 1.0


def _check_image_size(o: dict[str, Any]) -> None:
    size = o.get("image_size")
    if size is None:
        return
    f = PATCH_FACTOR
    if not (
        isinstance(size, (list, tuple))
        and len(size) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 and v % f == 0 for v in size)
    ):
        nearest = ""
        if isinstance(size, (list, tuple)) and all(isinstance(v, (int, float)) for v in size):
            nearest = f" (nearest: {[max(f, round(v / f) * f) for v in size]})"
        raise OptionError(
            f"image_size must be [width, height], positive multiples of {f} (Qwen2.5-VL: 14 px patches "
            f"merged 2 x 2), got {size!r}{nearest}"
        )
    area = size[0] * size[1]
    if not o["min_pixels"] <= area <= o["max_pixels"]:
        raise OptionError(
            f"image_size {list(size)} has {area} pixels, outside [min_pixels, max_pixels] = "
            f"[{o['min_pixels']}, {o['max_pixels']}]: the processor would resize it; change image_size or the bounds"
        )


def check_stage_options(options: Mapping[str, Any], stage: str) -> None:
    """Checks that depend on the stage: fitting samples completions, so `temperature` must be positive."""
    if stage == "fit" and options["temperature"] <= 0:
        raise OptionError(
            f"temperature must be > 0 to fit, got {options['temperature']!r}: GRPO compares several sampled "
            "completions per prompt, and greedy decoding makes every completion of a group identical (zero "
            "advantages, nothing learned). Evaluation is always greedy, whatever the temperature."
        )


def apply_optimizer_options(checkpoint: dict[str, Any], options: Mapping[str, Any]) -> None:
    """Rewrite a checkpoint's optimiser and LR-scheduler states to the configured optimiser options.

    Called before Lightning restores them on `fit --ckpt_path`, so a resumed run trains at the configured
    `learning_rate`, `weight_decay` and `adam_betas` (the schedule's progress is kept: its factor applies to
    the new base rate). Param groups are samr1's two AdamW groups: weights with decay, then the rest.
    """
    lr, decay = float(options["learning_rate"]), float(options["weight_decay"])
    betas = tuple(float(b) for b in options["adam_betas"])
    for state in checkpoint.get("optimizer_states", []):
        for index, group in enumerate(state.get("param_groups", [])):
            base = group.get("initial_lr", group.get("lr"))
            if base != lr:  # unchanged: keep the stored rate bit for bit (exact resume)
                group["lr"] = lr * (group["lr"] / base) if base else lr
                group["initial_lr"] = lr
            group.update(betas=betas, weight_decay=decay if index == 0 else 0.0)
    for scheduler in checkpoint.get("lr_schedulers", []):
        if "base_lrs" in scheduler:
            groups = (
                checkpoint["optimizer_states"][0]["param_groups"]
                if checkpoint.get("optimizer_states")
                else []
            )
            scheduler["base_lrs"] = [lr] * len(scheduler["base_lrs"])
            if groups and "_last_lr" in scheduler:
                scheduler["_last_lr"] = [group["lr"] for group in groups]


__all__ = ["OptionError", "apply_optimizer_options", "check_module_options", "check_stage_options"]
