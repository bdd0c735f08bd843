"""Shared fixtures: the tiny checkpoints are generated once per test session with the shipped generator."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, str]:
    """{"policy": <Qwen2.5-VL dir>, "sam_checkpoint": <.pth>, "sam_model_type": "vit_tiny", ...}"""
    from samr1.tools.tiny import write_tiny_checkpoints

    return write_tiny_checkpoints(tmp_path_factory.mktemp("tiny"), size="tiny", seed=0)


@pytest.fixture(scope="session")
def warm_checkpoints(tmp_path_factory) -> dict[str, str]:
    """Tiny checkpoints whose policy was warmed up to write the answer format (non-trivial metrics)."""
    from samr1.tools.tiny import write_tiny_checkpoints

    return write_tiny_checkpoints(tmp_path_factory.mktemp("warm"), size="tiny", seed=0, warmup_steps=60)
