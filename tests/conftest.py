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
    """Tiny checkpoints whose policy was warmed up to write the answer format (non-trivial metrics), to the
    instruction configs/demo.yaml uses."""
    from samr1.tools.tiny import write_tiny_checkpoints

    return write_tiny_checkpoints(
        tmp_path_factory.mktemp("warm"), size="tiny", seed=0, warmup_steps=60, warmup_prompt="Find {query}."
    )


@pytest.fixture(scope="session")  # a stateless factory: one for the whole session
def cpu_trainer():
    """A factory of quiet one-process CPU trainers: no logger, progress bar or model summary, and checkpoints
    only when a ModelCheckpoint is among `callbacks`. Keyword arguments override or extend `L.Trainer`'s."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    def make(**overrides) -> L.Trainer:
        callbacks = overrides.get("callbacks") or []
        options = dict(
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        options.update(overrides)
        return L.Trainer(**options)

    return make
