"""The rollout engine interface: samr1's engine implements it, and GRPOModule samples only through it."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from samr1.datamodules import SyntheticShapesDataModule
from samr1.datamodules.synthetic import make_shapes_sample
from samr1.models.qwen2_5_vl.loading import load_policy, load_processor
from samr1.modules.engine import RolloutEngine, SamplingSettings, SamR1Engine
from samr1.modules.module import GRPOModule
from samr1.modules.prompting import PromptBuilder
from samr1.modules.rollout import generate_rollouts


class RecordingEngine:
    """Another RolloutEngine (as a server-backed one would be): it records what GRPOModule asks of it."""

    def __init__(self, inner: SamR1Engine) -> None:
        self.inner, self.calls, self.synced = inner, [], []

    def sync_weights(self, policy) -> None:
        self.synced.append(policy)
        self.inner.sync_weights(policy)

    def generate(self, batch, sampling, *, features=None, generator=None):
        self.calls.append((len(batch), sampling, features is not None, generator))
        return self.inner.generate(batch, sampling, features=features, generator=generator)


def test_samr1_engine_is_a_rollout_engine_and_decodes_like_generate_rollouts(tiny_checkpoints):
    model = load_policy(tiny_checkpoints["policy"]).eval()
    tok = load_processor(tiny_checkpoints["policy"]).tokenizer
    batch = PromptBuilder(load_processor(tiny_checkpoints["policy"]), image_size=(56, 56))(
        [make_shapes_sample(i, "test", 0, 56, 2, 3) for i in range(2)]
    )
    engine = SamR1Engine(tok, check_every=4)
    assert isinstance(engine, RolloutEngine) and isinstance(RecordingEngine(engine), RolloutEngine)
    sampling = SamplingSettings(
        group_size=2, max_new_tokens=6, eos_token_ids=(tok.pad_token_id,), pad_token_id=tok.pad_token_id,
        temperature=0.0,
    )  # fmt: skip
    with pytest.raises(RuntimeError, match="before sync_weights"):
        engine.generate(batch, sampling)
    engine.sync_weights(model)
    ours = engine.generate(batch, sampling)
    plain = generate_rollouts(
        model, batch, tok, group_size=2, max_new_tokens=6, eos_token_ids=[tok.pad_token_id],
        pad_token_id=tok.pad_token_id, temperature=0.0, check_every=1, compact=False,
    )  # fmt: skip
    assert torch.equal(ours.completion_ids, plain.completion_ids) and ours.texts == plain.texts
    assert ours.prompt_index.tolist() == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="check_every"):
        SamR1Engine(tok, check_every=0)
    with pytest.raises(ValueError, match="compile_step needs static_cache"):
        SamR1Engine(tok, compile_step=True)
    static = SamR1Engine(tok, check_every=4, static_cache=True)
    static.sync_weights(model)
    assert torch.equal(static.generate(batch, sampling).completion_ids, plain.completion_ids)


def test_module_samples_through_its_engine(tiny_checkpoints, cpu_trainer):
    L.seed_everything(0)
    module = GRPOModule(
        model_path=tiny_checkpoints["policy"], image_size=(56, 56), group_size=3, max_new_tokens=5, top_p=0.9,
        decode_check_every=2,
    )  # fmt: skip
    module.configure_model()
    assert isinstance(module.rollout_engine, SamR1Engine) and module.rollout_engine.check_every == 2
    engine = module.rollout_engine = RecordingEngine(module.rollout_engine)
    module.configure_model()  # an assigned engine is kept
    assert module.rollout_engine is engine
    data = SyntheticShapesDataModule(
        num_train=4, image_size=56, batch_size=2, val_split=None, test_split=None
    )
    cpu_trainer(max_steps=2).fit(module, datamodule=data)
    assert [call[0] for call in engine.calls] == [2, 2] and engine.synced == [module.policy] * 2
    sampling = engine.calls[0][1]
    assert (sampling.group_size, sampling.max_new_tokens, sampling.top_p, sampling.temperature) == (
        3,
        5,
        0.9,
        1.0,
    )
    assert sampling.eos_token_ids == tuple(module.eos_ids) and sampling.banned_token_ids == tuple(
        module.banned_ids
    )
    assert all(call[2] and call[3] is module.generator for call in engine.calls)  # frozen vision: features
    with pytest.raises(ValueError, match="decode_compile needs decode_static_cache"):
        GRPOModule(model_path=tiny_checkpoints["policy"], decode_compile=True)
