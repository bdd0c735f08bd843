"""DAPO's dynamic sampling: groups whose rewards are all equal carry no signal, so they are dropped and the
informative groups of further rollout rounds fill the batch.

Each round is one batch of the training data loader (as in DAPO's reference trainer): the module scores a
round, adds it to a `GroupPool`, and updates only once the pool holds a batch of informative groups, the
resample rounds are used up, or the epoch ends. Extra prompts are therefore the data stream's next batches,
and a checkpoint (always written after an update, when the pool is empty) resumes exactly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from samr1.modules.prompting import PromptBatch
from samr1.modules.rollout import Rollouts
from samr1.modules.step import PhaseTimer
from samr1.rewards.base import Reward


@dataclass
class ScoredRound:
    """One rollout round's prompts and scored completions (groups of G consecutive completions per prompt)."""

    prompts: PromptBatch
    features: list[torch.Tensor] | None  # per-prompt vision features (frozen vision tower), else None
    rollouts: Rollouts
    total: torch.Tensor  # [N] total reward
    per_reward: dict[str, torch.Tensor]  # name -> [N]
    details: dict[str, dict[str, torch.Tensor]]  # reward name -> its per-completion details [N]
    masks: list | None  # [N] SAM masks of the reward that made them, else None

    @property
    def group_size(self) -> int:
        return self.rollouts.group_size

    def flat_groups(self) -> torch.Tensor:
        """[prompts] bool: the groups whose rewards are all equal (zero advantage under every scale)."""
        grouped = self.total.view(-1, self.group_size)
        return (grouped == grouped[:, :1]).all(dim=1)

    def select_groups(self, groups: list[int]) -> ScoredRound:
        """The round restricted to the prompts `groups` (in that order), renumbered from 0."""
        g = self.group_size
        rows = torch.as_tensor([p * g + j for p in groups for j in range(g)], dtype=torch.long)
        rollouts = self.rollouts.select(rows)
        rollouts = dataclasses.replace(
            rollouts,
            prompt_index=torch.arange(len(groups), device=rollouts.prompt_index.device).repeat_interleave(g),
        )
        return ScoredRound(
            prompts=select_prompts(self.prompts, groups),
            features=[self.features[p] for p in groups] if self.features is not None else None,
            rollouts=rollouts,
            total=self.total[rows],
            per_reward={k: v[rows] for k, v in self.per_reward.items()},
            details={name: {k: v[rows] for k, v in values.items()} for name, values in self.details.items()},
            masks=[self.masks[i] for i in rows.tolist()] if self.masks is not None else None,
        )


def reward_details(rewards: list[Reward], n: int) -> tuple[dict[str, dict[str, torch.Tensor]], list | None]:
    """What the rewards' last call left for logging: per-completion details ([n] tensors) and SAM masks."""
    details = {
        r.name: {k: v for k, v in r.details.items() if isinstance(v, torch.Tensor) and v.shape[:1] == (n,)}
        for r in rewards
    }
    masks = next((r.last_masks for r in rewards if r.last_masks is not None), None)
    return details, masks


def restore_reward_details(rewards: list[Reward], scored: ScoredRound) -> None:
    """Put a pooled batch's details and masks back on the rewards, so step statistics describe that batch."""
    for reward in rewards:
        reward.details = dict(scored.details.get(reward.name, {}))
        if reward.last_masks is not None:
            reward.last_masks = scored.masks


def select_prompts(batch: PromptBatch, prompts: list[int]) -> PromptBatch:
    """The prompts `prompts` of `batch`, with their images (patch rows and grids)."""
    images = batch.image_indices(prompts)
    rows = torch.as_tensor(prompts, dtype=torch.long, device=batch.input_ids.device)
    return dataclasses.replace(
        batch,
        input_ids=batch.input_ids.index_select(0, rows),
        attention_mask=batch.attention_mask.index_select(0, rows),
        pixel_values=batch.image_pixels(images),
        image_grid_thw=batch.image_grid_thw[images],
        images_per_prompt=[batch.images_per_prompt[p] for p in prompts],
        samples=[batch.samples[p] for p in prompts],
        texts=[batch.texts[p] for p in prompts] if batch.texts else [],
    )


def concat_prompts(batches: list[PromptBatch], pad_token_id: int) -> PromptBatch:
    """One prompt batch from several, left-padded to the longest prompt (padding is masked out)."""
    length = max(b.input_ids.shape[1] for b in batches)

    def left_pad(x: torch.Tensor, value: int) -> torch.Tensor:
        return F.pad(x, (length - x.shape[1], 0), value=value)

    return PromptBatch(
        input_ids=torch.cat([left_pad(b.input_ids, pad_token_id) for b in batches]),
        attention_mask=torch.cat([left_pad(b.attention_mask, 0) for b in batches]),
        pixel_values=torch.cat([b.pixel_values for b in batches]),
        image_grid_thw=torch.cat([b.image_grid_thw for b in batches]),
        images_per_prompt=[n for b in batches for n in b.images_per_prompt],
        samples=[s for b in batches for s in b.samples],
        texts=[t for b in batches for t in b.texts],
    )


def concat_rollouts(parts: list[Rollouts], prompts: list[int], pad_token_id: int) -> Rollouts:
    """One rollout batch from several answering `prompts[i]` prompts each (prompt indices offset in order),
    padded to the longest completion."""
    length = max(r.completion_ids.shape[1] for r in parts)
    offsets = [sum(prompts[:i]) for i in range(len(parts))]
    index = [r.prompt_index + offset for r, offset in zip(parts, offsets)]
    return Rollouts(
        completion_ids=torch.cat(
            [
                F.pad(r.completion_ids, (0, length - r.completion_ids.shape[1]), value=pad_token_id)
                for r in parts
            ]
        ),
        completion_mask=torch.cat(
            [F.pad(r.completion_mask, (0, length - r.completion_mask.shape[1])) for r in parts]
        ),
        texts=[t for r in parts for t in r.texts],
        prompt_index=torch.cat(index),
        truncated=torch.cat([r.truncated for r in parts]),
        group_size=parts[0].group_size,
    )


def concat_rounds(parts: list[ScoredRound], pad_token_id: int) -> ScoredRound:
    with_masks = all(p.masks is not None for p in parts)
    return ScoredRound(
        prompts=concat_prompts([p.prompts for p in parts], pad_token_id),
        features=[f for p in parts for f in p.features] if parts[0].features is not None else None,
        rollouts=concat_rollouts([p.rollouts for p in parts], [len(p.prompts) for p in parts], pad_token_id),
        total=torch.cat([p.total for p in parts]),
        per_reward={k: torch.cat([p.per_reward[k] for p in parts]) for k in parts[0].per_reward},
        details={
            name: {
                k: torch.cat([p.details[name][k] for p in parts])
                for k in values
                if all(k in p.details.get(name, {}) for p in parts)
            }
            for name, values in parts[0].details.items()
        },
        masks=[m for p in parts for m in p.masks] if with_masks else None,
    )


class GroupPool:
    """Informative groups gathered over rollout rounds until they fill a batch.

    The batch size (target) is the number of prompts of the pool's first round. `add` keeps, in arrival
    order, up to target informative groups and up to target flat ones (the flat ones only fill a batch whose
    rounds ran out). `take` returns the batch (informative groups first) and its statistics, and empties the
    pool.
    """

    def __init__(self, max_resample_rounds: int, pad_token_id: int) -> None:
        if max_resample_rounds < 0:
            raise ValueError(f"max_resample_rounds must be at least 0, got {max_resample_rounds}")
        self.max_resample_rounds = max_resample_rounds
        self.pad_token_id = pad_token_id
        self.reset()

    def reset(self) -> None:
        self.timer = PhaseTimer()  # the phases of every round of one batch
        self.target = 0
        self.rounds = 0
        self.groups_seen = 0
        self.flat_seen = 0
        self.informative: list[ScoredRound] = []
        self.flat: list[ScoredRound] = []
        self.informative_count = 0
        self.flat_count = 0

    def add(self, scored: ScoredRound) -> None:
        if self.rounds == 0:
            self.target = len(scored.prompts)
        self.rounds += 1
        flat = scored.flat_groups().tolist()
        self.groups_seen += len(flat)
        self.flat_seen += sum(flat)
        keep = [p for p, is_flat in enumerate(flat) if not is_flat][: self.target - self.informative_count]
        fill = [p for p, is_flat in enumerate(flat) if is_flat][: self.target - self.flat_count]
        if keep:
            self.informative.append(scored.select_groups(keep))
            self.informative_count += len(keep)
        if fill:
            self.flat.append(scored.select_groups(fill))
            self.flat_count += len(fill)

    @property
    def full(self) -> bool:
        """The pool holds a batch of informative groups."""
        return self.informative_count >= self.target

    @property
    def rounds_left(self) -> bool:
        return self.rounds <= self.max_resample_rounds

    def take(self) -> tuple[ScoredRound, dict[str, float]]:
        """The batch: the informative groups, then flat ones up to the target; and what filtering did."""
        parts = list(self.informative)
        missing = self.target - self.informative_count
        if missing > 0:
            left = missing
            for part in self.flat:
                n = min(left, len(part.prompts))
                parts.append(part.select_groups(list(range(n))) if n < len(part.prompts) else part)
                left -= n
                if left == 0:
                    break
        batch = concat_rounds(parts, self.pad_token_id)
        stats = {
            "dynamic_sampling/resample_rounds": float(self.rounds - 1),
            "dynamic_sampling/flat_group_frac_before": self.flat_seen / max(self.groups_seen, 1),
            "dynamic_sampling/flat_group_frac_after": max(missing, 0) / max(len(batch.prompts), 1),
        }
        self.reset()
        return batch, stats
