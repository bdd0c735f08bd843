"""The update loop's loss: Dr. GRPO's "fixed" divides by N x max_new_tokens (a constant), kl_clamp reaches it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from samr1.datamodules.synthetic import make_shapes_sample
from samr1.models.qwen2_5_vl.loading import load_policy, load_processor, special_token_ids
from samr1.modules.prompting import PromptBuilder
from samr1.modules.rollout import generate_rollouts
from samr1.modules.update import UpdateBatch, micro_batch_loss


@pytest.fixture(scope="module")
def batch(tiny_checkpoints):
    model = load_policy(tiny_checkpoints["policy"])
    processor = load_processor(tiny_checkpoints["policy"])
    prompts = PromptBuilder(processor, image_size=(56, 56))(
        [make_shapes_sample(i, "test", 0, 56, 2, 3) for i in range(2)]
    )
    eos, banned = special_token_ids(processor.tokenizer, model.lm_head.weight.shape[0])
    rollouts = generate_rollouts(
        model, prompts, processor.tokenizer, group_size=2, max_new_tokens=12, eos_token_ids=[],
        pad_token_id=processor.tokenizer.pad_token_id, banned_token_ids=banned,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    advantages = torch.tensor([1.0, -0.5, 0.25, 2.0])
    return model, UpdateBatch(prompts, rollouts, advantages, None, None, None)


def _module(model, **hparams):
    defaults = dict(
        clip_low=0.2, clip_high=0.3, kl_coef=0.0, kl_clamp=None, aggregation="fixed", entropy_coef=0.0,
        max_new_tokens=12, importance_level="token",
    )  # fmt: skip
    return SimpleNamespace(
        hparams=SimpleNamespace(**{**defaults, **hparams}), policy=model, logprob_temperature=lambda: 1.0
    )


def test_fixed_aggregation_divides_by_rows_times_max_new_tokens(batch):
    model, update = batch
    rows = torch.tensor([0, 1, 3])
    lengths = update.rollouts.completion_mask[rows].sum(dim=1).double()
    # ratio 1 (no old log-probs): each token contributes -A; the sum over rows is -sum(A_i x length_i).
    expected = -(update.advantages[rows].double() * lengths).sum().item()
    for max_new in (12, 24, 1300):
        loss, _, tokens = micro_batch_loss(_module(model, max_new_tokens=max_new), update, rows)
        assert tokens == lengths.sum().item()
        assert loss.item() == pytest.approx(expected / (3 * max_new), rel=1e-6)
    # The divisor is not the micro-batch's longest completion (12 here, every completion is truncated).
    token, _, _ = micro_batch_loss(_module(model, aggregation="token"), update, rows)
    assert token.item() == pytest.approx(expected / lengths.sum().item(), rel=1e-6)


def test_kl_clamp_reaches_the_loss(batch):
    model, update = batch
    rows = torch.arange(4)
    far = update.rollouts.completion_ids.new_zeros(update.rollouts.completion_ids.shape).float() - 50.0
    ref = UpdateBatch(update.prompts, update.rollouts, torch.zeros(4), None, far, None)  # ref log-prob -50
    # k3 = exp(-50 - logp) - (-50 - logp) - 1 ~ 50 + logp - 1 > 10 for every token: clamped to 10 each.
    _, clamped, _ = micro_batch_loss(
        _module(model, kl_coef=0.1, kl_clamp=10.0, aggregation="token"), ref, rows
    )
    _, free, _ = micro_batch_loss(_module(model, kl_coef=0.1, aggregation="token"), ref, rows)
    assert clamped["kl"] == pytest.approx(10.0) and free["kl"] > 30.0
