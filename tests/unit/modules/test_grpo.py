"""group_advantages and policy_loss against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from samr1.modules.grpo import aggregation_units, group_advantages, k3_kl, policy_loss

REWARDS = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])


def test_group_scale():
    # Group 1: mean 0.5, unbiased std sqrt(1/3); group 2 is flat and gets exactly 0.
    a = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    expected = torch.tensor([a, -a, -a, a, 0.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(group_advantages(REWARDS, 4, "group"), expected)


def test_batch_scale():
    # Unbiased std of all 8 rewards: sqrt(5.5 / 7).
    a = 0.5 / (math.sqrt(5.5 / 7) + 1e-6)
    expected = torch.tensor([a, -a, -a, a, 0.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(group_advantages(REWARDS, 4, "batch"), expected)


def test_no_scale():
    expected = torch.tensor([0.5, -0.5, -0.5, 0.5, 0.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(group_advantages(REWARDS, 4, "none"), expected)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_flat_groups_are_zero_never_nan(scale):
    adv = group_advantages(torch.full((8,), 0.3), 4, scale)
    assert torch.equal(adv, torch.zeros(8))


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(REWARDS, 3)
    with pytest.raises(ValueError, match="at least 2"):
        group_advantages(REWARDS, 1)
    with pytest.raises(ValueError, match="unknown advantage scale"):
        group_advantages(REWARDS, 4, "rank")


LOGP = torch.tensor([[-1.0, -0.5, -2.0], [-0.2, -0.3, -0.4]])
OLD = torch.tensor([[-1.0, -0.9, -1.0], [-0.2, 0.0, -0.4]])
ADV = torch.tensor([1.0, -2.0])
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])
# Per token, clip range [0.8, 1.3]:
#   row 0 (A = 1):  ratio 1 -> -1;  ratio e^0.4 = 1.4918 clipped to 1.3 -> -1.3;  ratio e^-1 -> -e^-1
#   row 1 (A = -2): ratio 1 -> 2;   ratio e^-0.3 = 0.7408 clipped to 0.8 -> 1.6;  (masked)
ROW0 = [-1.0, -1.3, -math.exp(-1.0)]
ROW1 = [2.0, 1.6]


@pytest.mark.parametrize(
    "aggregation, expected",
    [
        ("token", (sum(ROW0) + sum(ROW1)) / 5),
        ("sequence", (sum(ROW0) / 3 + sum(ROW1) / 2) / 2),
        ("fixed", (sum(ROW0) + sum(ROW1)) / (2 * 1300)),  # Dr. GRPO: N x max_length, not N x T
    ],
)
def test_policy_loss_aggregations(aggregation, expected):
    loss, metrics = policy_loss(
        LOGP, OLD, ADV, MASK, clip_low=0.2, clip_high=0.3, aggregation=aggregation, max_length=1300
    )
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert metrics["clip_frac_high"].item() == pytest.approx(1 / 5)
    assert metrics["clip_frac_low"].item() == pytest.approx(1 / 5)


def test_policy_loss_with_k3_kl():
    ref = LOGP.clone()
    ref[0, 0] = -1.1  # delta -0.1 on one counted token
    ref[1, 2] = -0.5  # on a masked token: must not count
    k3 = math.exp(-0.1) + 0.1 - 1
    loss, metrics = policy_loss(LOGP, OLD, ADV, MASK, ref_logprobs=ref, kl_coef=0.1)
    assert loss.item() == pytest.approx((sum(ROW0) + sum(ROW1) + 0.1 * k3) / 5, abs=1e-6)
    assert metrics["kl"].item() == pytest.approx(k3 / 5, abs=1e-7)


def test_fixed_aggregation_is_a_constant_and_needs_max_length():
    # The same tokens padded to a longer rollout give the same loss: the divisor is N x max_length.
    padded = [torch.nn.functional.pad(x, (0, 4)) for x in (LOGP, OLD, MASK)]
    short, _ = policy_loss(LOGP, OLD, ADV, MASK, aggregation="fixed", max_length=8)
    long, _ = policy_loss(*padded[:2], ADV, padded[2], aggregation="fixed", max_length=8)
    assert short.item() == long.item() == pytest.approx((sum(ROW0) + sum(ROW1)) / 16, abs=1e-7)
    with pytest.raises(ValueError, match="max_length"):
        policy_loss(LOGP, OLD, ADV, MASK, aggregation="fixed")
    with pytest.raises(ValueError, match="exceed max_length 2"):
        policy_loss(LOGP, OLD, ADV, MASK, aggregation="fixed", max_length=2)


def test_kl_clamp_limits_each_token_to_ten():
    logp = torch.tensor([[-4.0, -1.0]])
    ref = torch.tensor([[-1.0, -1.5]])  # deltas 3 and -0.5: k3 = e^3 - 4 = 16.0855 and e^-0.5 - 0.5
    small = math.exp(-0.5) - 0.5
    assert k3_kl(logp, ref)[0].tolist() == pytest.approx([math.exp(3) - 4, small])
    assert k3_kl(logp, ref, clamp=10.0)[0].tolist() == pytest.approx([10.0, small])
    mask, adv = torch.ones(1, 2), torch.zeros(1)
    _, off = policy_loss(logp, logp, adv, mask, ref_logprobs=ref, kl_coef=0.1)
    loss, on = policy_loss(logp, logp, adv, mask, ref_logprobs=ref, kl_coef=0.1, kl_clamp=10.0)
    assert off["kl"].item() == pytest.approx((math.exp(3) - 4 + small) / 2)
    assert on["kl"].item() == pytest.approx((10.0 + small) / 2)
    assert loss.item() == pytest.approx(0.1 * (10.0 + small) / 2)


def test_k3_is_zero_at_equality_and_positive_elsewhere():
    x = torch.tensor([-1.0, -0.5])
    assert torch.equal(k3_kl(x, x), torch.zeros(2))
    assert (k3_kl(x, x + 0.3) > 0).all()


def test_kl_without_reference_is_an_error():
    with pytest.raises(ValueError, match="ref_logprobs"):
        policy_loss(LOGP, OLD, ADV, MASK, kl_coef=0.1)


def test_gradient_flows_only_through_unclipped_masked_tokens():
    logp = LOGP.clone().requires_grad_(True)
    loss, _ = policy_loss(logp, OLD, ADV, MASK, aggregation="token")
    loss.backward()
    # Clipped tokens (0,1) and (1,1) and the masked token (1,2) get no gradient; d(-ratio*A)/dlogp = -ratio*A/5.
    expected = torch.tensor([[-1.0 / 5, 0.0, -math.exp(-1.0) / 5], [2.0 / 5, 0.0, 0.0]])
    torch.testing.assert_close(logp.grad, expected)


def _random_batch(seed: int) -> tuple[torch.Tensor, ...]:
    """Six completions of five tokens: log-probs (requiring grad), old log-probs, advantages, a mask."""
    g = torch.Generator().manual_seed(seed)
    logp = torch.randn(6, 5, generator=g).requires_grad_(True)
    old = logp.detach() + 0.1 * torch.randn(6, 5, generator=g)
    adv = torch.randn(6, generator=g)
    mask = (torch.rand(6, 5, generator=g) > 0.3).long()
    return logp, old, adv, mask


@pytest.mark.parametrize("aggregation", ["token", "sequence", "fixed"])
def test_weighted_micro_batches_equal_one_pass(aggregation):
    # The trainer accumulates micro-batch losses weighted by aggregation_units; the gradient must be the same.
    logp, old, adv, mask = _random_batch(seed=0)
    full, _ = policy_loss(logp, old, adv, mask, aggregation=aggregation, max_length=5)
    (full_grad,) = torch.autograd.grad(full, logp)
    total = aggregation_units(mask, aggregation)
    accumulated = torch.zeros_like(logp)
    for rows in (slice(0, 2), slice(2, 5), slice(5, 6)):
        part, _ = policy_loss(
            logp[rows], old[rows], adv[rows], mask[rows], aggregation=aggregation, max_length=5
        )
        (grad,) = torch.autograd.grad(part * aggregation_units(mask[rows], aggregation) / total, logp)
        accumulated += grad
    torch.testing.assert_close(accumulated, full_grad)


@pytest.mark.parametrize(
    "aggregation, expected",
    [
        # normaliser 10: the count of the global batch this one is part of (tokens, or sequences).
        ("token", (sum(ROW0) + sum(ROW1)) / 10),
        ("sequence", (sum(ROW0) / 3 + sum(ROW1) / 2) / 10),
        ("fixed", (sum(ROW0) + sum(ROW1)) / (10 * 8)),
    ],
)
def test_policy_loss_normaliser_is_the_global_count(aggregation, expected):
    loss, metrics = policy_loss(LOGP, OLD, ADV, MASK, aggregation=aggregation, max_length=8, normaliser=10)
    assert loss.item() == pytest.approx(expected, abs=1e-7)
    assert metrics["clip_frac_high"].item() == pytest.approx(1 / 5)  # metrics stay this batch's own means


def test_policy_loss_normaliser_must_be_positive():
    with pytest.raises(ValueError, match="normaliser must be a positive count of token units, got 0"):
        policy_loss(LOGP, OLD, ADV, MASK, normaliser=0)


@pytest.mark.parametrize("aggregation", ["token", "sequence", "fixed"])
def test_shares_of_a_global_normaliser_add_up_to_one_pass(aggregation):
    # What each process does: every part's loss divided by the whole batch's units; the gradients add up.
    logp, old, adv, mask = _random_batch(seed=1)
    full, _ = policy_loss(logp, old, adv, mask, aggregation=aggregation, max_length=5)
    (full_grad,) = torch.autograd.grad(full, logp)
    total = aggregation_units(mask, aggregation)
    parts, accumulated = 0.0, torch.zeros_like(logp)
    for rows in (slice(0, 1), slice(1, 5), slice(5, 6)):
        part, _ = policy_loss(
            logp[rows],
            old[rows],
            adv[rows],
            mask[rows],
            aggregation=aggregation,
            max_length=5,
            normaliser=total,
        )
        (grad,) = torch.autograd.grad(part, logp)
        parts, accumulated = parts + part.item(), accumulated + grad
    assert parts == pytest.approx(full.item(), abs=1e-6)
    torch.testing.assert_close(accumulated, full_grad)
