"""Dtype names as configs write them ('bfloat16', 'bf16', ...) -> torch dtypes, and samr1's precision rules.

Two dtypes, two jobs (README "Precision"):
- `param_dtype`: what the trainable weights, their gradients and AdamW's moments are stored in. float32: at
  lr 1e-6 an AdamW step moves a weight by about 1e-6, far below bfloat16's resolution (a weight of 0.02 has
  an ulp of 1.2e-4), so bf16 storage rounds almost every update away (2% of the tiny model's decoder weights
  change in one step, its RMSNorm gains never do; tests/test_precision.py).
- `compute_dtype`: what matmuls and activations run in. bfloat16 on GPUs: under FSDP2 the weights are
  all-gathered in it (MixedPrecisionPolicy), otherwise autocast.
"""

from __future__ import annotations

import contextlib
import warnings

import torch

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_LOW = (torch.bfloat16, torch.float16)
# Lightning precisions that convert the whole LightningModule (the policy's master weights) to half precision.
_HALF_STORAGE_PRECISIONS = ("bf16-true", "16-true")  # as Trainer.precision reports them


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """'float32' / 'bfloat16' / 'float16' (or a torch dtype) -> torch dtype; None means float32."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).removeprefix("torch.")
    aliases = {
        "bf16": "bfloat16",
        "fp16": "float16",
        "half": "float16",
        "fp32": "float32",
        "float": "float32",
    }
    name = aliases.get(name, name)
    if name not in _DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; choose one of {sorted(_DTYPES)}")
    return _DTYPES[name]


def dtype_name(dtype: str | torch.dtype | None) -> str:
    """The canonical config name ('float32', 'bfloat16', 'float16') of a dtype or alias."""
    resolved = resolve_dtype(dtype)
    return next(name for name, value in _DTYPES.items() if value == resolved)


def resolve_precision(param_dtype: str, compute_dtype: str, dtype: str | None) -> tuple[str, str]:
    """(param_dtype, compute_dtype) after the deprecated `model.dtype` alias, with a warning naming it.

    `model.dtype` used to load the policy in that dtype, so `dtype: bfloat16` stored the master weights in bf16
    and the recipe did not learn. It now means the compute dtype; bf16 storage needs `param_dtype: bfloat16`.
    """
    param, compute = dtype_name(param_dtype), dtype_name(compute_dtype)
    if dtype is None:
        return param, compute
    legacy = dtype_name(dtype)
    if compute not in ("float32", legacy):
        raise ValueError(
            f"model.dtype={dtype!r} (deprecated) conflicts with model.compute_dtype={compute_dtype!r}; "
            "drop model.dtype"
        )
    warnings.warn(
        f"model.dtype is deprecated: model.dtype={dtype!r} now sets model.compute_dtype={legacy!r}; the trainable "
        f"weights stay in model.param_dtype={param!r}. Write `compute_dtype: {legacy}` instead (and "
        "`param_dtype: bfloat16` only if you really want bf16 master weights).",
        FutureWarning,
        stacklevel=3,
    )
    return param, legacy


def precision_warnings(
    param_dtype: str, compute_dtype: str, trainer_precision: str | None, lora: bool = False
) -> list[str]:
    """Start-of-run warnings for settings that store trainable weights in half precision, naming the setting.

    With LoRA, `param_dtype` is the frozen base's storage and PEFT keeps the adapters in float32: no warning.
    """
    out = []
    rounding = (
        "small learning rates round away: at lr 1e-6 one AdamW step changes about 2% of bf16 weights and no "
        "RMSNorm gain. For float32 master weights with {c} compute use model.param_dtype: float32, "
        "model.compute_dtype: {c} and trainer.precision: 32-true."
    ).format(c=compute_dtype if compute_dtype != "float32" else "bfloat16")
    if resolve_dtype(param_dtype) in _LOW and not lora:
        out.append(
            f"model.param_dtype={param_dtype} stores the trainable weights and AdamW state in it; {rounding}"
        )
    if trainer_precision is not None and str(trainer_precision) in _HALF_STORAGE_PRECISIONS:
        out.append(
            f"trainer.precision={trainer_precision} converts the policy's weights (and so AdamW's state) to half "
            f"precision; {rounding}"
        )
    if resolve_dtype(compute_dtype) == torch.float16:
        out.append(
            "model.compute_dtype=float16 runs without loss scaling, so small gradients can underflow; prefer bfloat16"
        )
    return out


def autocast(device: torch.device | str, param_dtype: str, compute_dtype: str, sharded: bool):
    """The context the policy runs in: autocast to `compute_dtype` when it differs from the stored weights.

    Under FSDP2 nothing: the sharded weights are all-gathered in the compute dtype (MixedPrecisionPolicy).
    """
    compute = resolve_dtype(compute_dtype)
    if sharded or compute == resolve_dtype(param_dtype) or compute == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=compute)
