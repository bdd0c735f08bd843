"""GSPO (importance_level="sequence") against values and gradients computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from samr1.modules.grpo import aggregate, policy_loss
from samr1.modules.policy import GRPOModule

LOGP = torch.tensor([[-1.0, -0.5, -2.0], [-0.2, -0.3, -0.4]])
OLD = torch.tensor([[-1.0, -0.9, -1.0], [-0.2, 0.0, -0.4]])
ADV = torch.tensor([1.0, -2.0])
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])
# Sequence log-ratios: row 0 (0 + 0.4 - 1) / 3 = -0.2; row 1 (0 - 0.3) / 2 = -0.15 (its masked token ignored).
S0, S1 = math.exp(-0.2), math.exp(-0.15)  # 0.8187, 0.8607: both inside [0.8, 1.3]


@pytest.mark.parametrize(
    "aggregation, expected, grad0, grad1",
    [
        # per token: row 0 -S0 * 1, row 1 -S1 * -2; d/dlogp of a token = -A_i * S_i * (its weight)
        ("token", (3 * -S0 + 2 * 2 * S1) / 5, -S0 / 5, 2 * S1 / 5),
        ("sequence", (-S0 + 2 * S1) / 2, -S0 / 6, 2 * S1 / 4),
        ("fixed", (3 * -S0 + 2 * 2 * S1) / 6, -S0 / 6, 2 * S1 / 6),
    ],
)
def test_sequence_ratio_loss_and_gradients(aggregation, expected, grad0, grad1):
    logp = LOGP.clone().requires_grad_(True)
    loss, metrics = policy_loss(
        logp,
        OLD,
        ADV,
        MASK,
        clip_low=0.2,
        clip_high=0.3,
        aggregation=aggregation,
        max_length=3,
        importance_level="sequence",
    )
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    loss.backward()
    expected_grad = torch.tensor([[grad0, grad0, grad0], [grad1, grad1, 0.0]])
    torch.testing.assert_close(logp.grad, expected_grad)
    assert metrics["ratio_mean"].item() == pytest.approx((S0 + S1) / 2, abs=1e-6)
    assert metrics["clip_frac_low"].item() == 0.0 and metrics["clip_frac_high"].item() == 0.0


def test_a_clipped_sequence_gets_no_gradient_and_counts_once():
    # Range [0.9, 1.1]: row 0 (S0 < 0.9, A > 0) keeps its unclipped branch; row 1 (S1 < 0.9, A < 0) is
    # clipped: -min(-2 S1, -2 * 0.9) = 1.8 on each of its tokens, with no gradient.
    logp = LOGP.clone().requires_grad_(True)
    loss, metrics = policy_loss(
        logp, OLD, ADV, MASK, clip_low=0.1, clip_high=0.1, importance_level="sequence"
    )
    assert loss.item() == pytest.approx((3 * -S0 + 2 * 1.8) / 5, abs=1e-6)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-S0 / 5] * 3, [0.0, 0.0, 0.0]]))
    assert metrics["clip_frac_low"].item() == pytest.approx(1 / 2)  # one of two sequences, not 2 of 5 tokens
    assert metrics["clip_frac_high"].item() == 0.0


def test_kl_term_is_per_token_at_sequence_level():
    ref = LOGP.clone()
    ref[0, 0] = -1.1
    k3 = math.exp(-0.1) + 0.1 - 1
    loss, metrics = policy_loss(
        LOGP, OLD, ADV, MASK, ref_logprobs=ref, kl_coef=0.1, importance_level="sequence"
    )
    assert loss.item() == pytest.approx((3 * -S0 + 2 * 2 * S1 + 0.1 * k3) / 5, abs=1e-6)
    assert metrics["kl"].item() == pytest.approx(k3 / 5, abs=1e-7)


@pytest.mark.parametrize("aggregation", ["token", "sequence", "fixed"])
def test_gradient_equals_trls_broadcast_sequence_weight(aggregation):
    # TRL's importance_sampling_level="sequence": coef = exp(mean log-ratio) [N, 1] broadcast over tokens.
    g = torch.Generator().manual_seed(1)
    logp = (-torch.rand(6, 5, generator=g)).requires_grad_(True)
    old = logp.detach() + 0.3 * torch.randn(6, 5, generator=g)
    adv = torch.randn(6, generator=g)
    mask = (torch.rand(6, 5, generator=g) > 0.3).long()
    mask[:, 0] = 1
    ours, _ = policy_loss(
        logp, old, adv, mask, aggregation=aggregation, max_length=5, importance_level="sequence"
    )
    m = mask.float()
    coef = torch.exp(((logp - old) * m).sum(1, keepdim=True) / m.sum(1, keepdim=True))
    a = adv.unsqueeze(1)
    per_token = -torch.minimum(coef * a, coef.clamp(0.8, 1.3) * a).expand_as(logp)
    trl = aggregate(per_token, m, aggregation, max_length=5)
    torch.testing.assert_close(ours, trl)
    torch.testing.assert_close(torch.autograd.grad(ours, logp)[0], torch.autograd.grad(trl, logp)[0])


def test_unknown_importance_level_is_refused():
    with pytest.raises(ValueError, match="importance_level"):
        policy_loss(LOGP, OLD, ADV, MASK, importance_level="group")


def test_module_refuses_an_unknown_importance_level(tiny_checkpoints):
    with pytest.raises(ValueError, match="importance_level"):
        GRPOModule(model_path=tiny_checkpoints["policy"], importance_level="group")
