"""Dynamic sampling's group pool: which groups are dropped and kept, and how rounds are merged (exact)."""

from __future__ import annotations

import pytest
import torch

from samr1.modules.dynamic_sampling import GroupPool, ScoredRound
from samr1.modules.policy import GRPOModule
from samr1.modules.prompting import PromptBatch
from samr1.modules.rollout import Rollouts
from samr1.sample import SegSample

G, PAD = 2, 0


def scored_round(name: str, totals: list[float], prompt_len: int, completion_len: int) -> ScoredRound:
    """A round of len(totals) // G prompts; prompt p's tokens and patches are all 100 * round + p."""
    p = len(totals) // G
    base = {"a": 100, "b": 200, "c": 300}[name]
    ids = torch.tensor([[base + i] * prompt_len for i in range(p)])
    completions = torch.tensor([[base + i // G] * completion_len for i in range(p * G)])
    prompts = PromptBatch(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        pixel_values=torch.tensor([[float(base + i)] * 2 for i in range(p) for _ in range(4)]),
        image_grid_thw=torch.tensor([[1, 2, 2]] * p),  # 4 patches per image
        images_per_prompt=[1] * p,
        samples=[SegSample(id=f"{name}{i}", query="q", image_path="unused.png") for i in range(p)],
        texts=[f"{name}{i}" for i in range(p)],
    )
    rollouts = Rollouts(
        completion_ids=completions,
        completion_mask=torch.ones_like(completions),
        texts=[f"{name}{i // G}.{i % G}" for i in range(p * G)],
        prompt_index=torch.arange(p).repeat_interleave(G),
        truncated=torch.zeros(p * G, dtype=torch.bool),
        group_size=G,
    )
    total = torch.tensor(totals)
    details = {"toy": {"raw": total * 10}}
    return ScoredRound(
        prompts, None, rollouts, total, {"toy": total}, details, [f"m{t}" for t in rollouts.texts]
    )


def group_ids(batch: ScoredRound) -> list[str]:
    return [s.id for s in batch.prompts.samples]


def test_flat_groups_are_dropped_and_the_next_round_fills_the_batch():
    pool = GroupPool(max_resample_rounds=4, pad_token_id=PAD)
    # Round a: groups a0 (1, 1) and a2 (2, 2) are flat; a1 and a3 carry signal.
    pool.add(scored_round("a", [1, 1, 0, 1, 2, 2, 0, 0.5], prompt_len=3, completion_len=2))
    assert (pool.target, pool.informative_count, pool.full) == (4, 2, False)
    # Round b: b1 and b3 flat; b0 and b2 informative, which fills the batch of 4.
    pool.add(scored_round("b", [0, 1, 1, 1, 3, 0, 0, 0], prompt_len=5, completion_len=3))
    assert pool.full
    batch, stats = pool.take()
    assert group_ids(batch) == ["a1", "a3", "b0", "b2"]
    assert stats == {
        "dynamic_sampling/resample_rounds": 1.0,
        "dynamic_sampling/flat_group_frac_before": 0.5,
        "dynamic_sampling/flat_group_frac_after": 0.0,
    }
    assert batch.total.tolist() == [0, 1, 0, 0.5, 0, 1, 3, 0]
    assert batch.details["toy"]["raw"].tolist() == [0, 10, 0, 5, 0, 10, 30, 0]
    assert batch.masks == ["ma1.0", "ma1.1", "ma3.0", "ma3.1", "mb0.0", "mb0.1", "mb2.0", "mb2.1"]
    assert batch.rollouts.prompt_index.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    # Round a's prompts are left-padded to round b's length; its completions right-padded to b's.
    assert batch.prompts.input_ids.tolist() == [
        [PAD, PAD, 101, 101, 101],
        [PAD, PAD, 103, 103, 103],
        [200] * 5,
        [202] * 5,
    ]
    assert batch.prompts.attention_mask.sum(dim=1).tolist() == [3, 3, 5, 5]
    assert batch.rollouts.completion_ids[:, 0].tolist() == [101, 101, 103, 103, 200, 200, 202, 202]
    assert batch.rollouts.completion_mask.sum(dim=1).tolist() == [2, 2, 2, 2, 3, 3, 3, 3]
    assert batch.prompts.pixel_values[::4, 0].tolist() == [101, 103, 200, 202]
    assert batch.prompts.image_grid_thw.shape == (4, 3)
    assert pool.rounds == 0 and pool.informative_count == 0  # emptied


def test_rounds_that_run_out_top_the_batch_up_with_flat_groups():
    pool = GroupPool(max_resample_rounds=1, pad_token_id=PAD)
    pool.add(scored_round("a", [1, 1, 0, 1, 2, 2, 0, 0.5], prompt_len=3, completion_len=2))
    assert pool.rounds_left
    pool.add(scored_round("b", [1, 1, 0, 0, 3, 3, 5, 5], prompt_len=3, completion_len=2))  # all flat
    assert not pool.rounds_left and not pool.full
    batch, stats = pool.take()
    # The informative groups first, then the earliest flat groups.
    assert group_ids(batch) == ["a1", "a3", "a0", "a2"]
    assert stats["dynamic_sampling/resample_rounds"] == 1.0
    assert stats["dynamic_sampling/flat_group_frac_before"] == 6 / 8
    assert stats["dynamic_sampling/flat_group_frac_after"] == 2 / 4


def test_surplus_informative_groups_are_left_out():
    pool = GroupPool(max_resample_rounds=2, pad_token_id=PAD)
    pool.add(scored_round("a", [0, 1, 1, 1, 0, 2, 0, 3], prompt_len=3, completion_len=2))  # a1 flat
    pool.add(scored_round("b", [1, 1, 0, 1, 0, 2, 0, 3], prompt_len=3, completion_len=2))  # b0 flat
    batch, stats = pool.take()
    assert group_ids(batch) == ["a0", "a2", "a3", "b1"]
    assert stats["dynamic_sampling/flat_group_frac_before"] == 2 / 8


def test_negative_rounds_are_refused(tiny_checkpoints):
    with pytest.raises(ValueError, match="max_resample_rounds"):
        GroupPool(max_resample_rounds=-1, pad_token_id=PAD)
    with pytest.raises(ValueError, match="max_resample_rounds"):
        GRPOModule(model_path=tiny_checkpoints["policy"], dynamic_sampling=True, max_resample_rounds=-1)
