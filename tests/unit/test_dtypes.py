"""Precision settings: warnings name the setting that stores trainable weights in half precision."""

from __future__ import annotations

import warnings

import pytest

from samr1.dtypes import autocast, precision_warnings, resolve_precision


def test_half_precision_trainer_warns_naming_the_setting():
    for precision in ("bf16-true", "16-true"):
        (message,) = precision_warnings("float32", "bfloat16", precision)
        assert message.startswith(f"trainer.precision={precision} converts the policy's weights")
        assert "model.compute_dtype: bfloat16 and trainer.precision: 32-true" in message
    assert precision_warnings("float32", "float32", "bf16-mixed") == []
    assert (
        precision_warnings("bfloat16", "bfloat16", "32-true", lora=True) == []
    )  # frozen base, fp32 adapters
    assert "model.param_dtype=bfloat16" in precision_warnings("bfloat16", "bfloat16", "32-true")[0]
    assert "underflow" in precision_warnings("float32", "float16", "32-true")[0]


def test_deprecated_dtype_means_compute_dtype():
    with pytest.warns(FutureWarning, match="model.dtype is deprecated.*compute_dtype='bfloat16'"):
        assert resolve_precision("float32", "float32", "bfloat16") == ("float32", "bfloat16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_precision("fp32", "bf16", None) == ("float32", "bfloat16")
    with pytest.raises(ValueError, match="model.dtype='float16' .*conflicts with model.compute_dtype"):
        resolve_precision("float32", "bfloat16", "float16")


def test_autocast_only_where_compute_differs_from_storage_and_not_under_fsdp2():
    import torch

    assert isinstance(autocast("cpu", "float32", "bfloat16", sharded=False), torch.autocast)
    for args in (
        ("float32", "float32", False),
        ("bfloat16", "bfloat16", False),
        ("float32", "bfloat16", True),
    ):
        assert not isinstance(autocast("cpu", *args[:2], sharded=args[2]), torch.autocast)
