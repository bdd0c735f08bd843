"""The rollout engine: what GRPO asks of whatever samples its completions, and samr1's own engine.

GRPOModule samples only through `RolloutEngine`: prompts (a `PromptBatch`, images included) and
`SamplingSettings` go in; `Rollouts` come out (completion ids, masks up to and including EOS, texts, which
prompt each row answers, truncation). samr1's engine decodes with the live policy; an engine that keeps its
own copy of the weights (an inference server such as vLLM) refreshes it in `sync_weights`, which GRPOModule
calls before every rollout. Old log-probs for the importance ratio are always recomputed by the training
forward (`completion_logprobs`): an inference engine's own numerics would bias the ratio.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from samr1.modules.prompting import PromptBatch
from samr1.modules.rollout import Rollouts, generate_rollouts


@dataclass(frozen=True)
class SamplingSettings:
    """How completions are sampled.

    Args:
        group_size: completions per prompt (G), returned in consecutive groups.
        max_new_tokens: most tokens per completion.
        eos_token_ids: tokens that end a completion (kept in it; the mask ends there).
        pad_token_id: fills a completion after its end.
        banned_token_ids: never sampled (vision special tokens, ids past the tokenizer).
        temperature: sampling temperature; 0: greedy.
        top_p: nucleus mass (1.0: the full distribution).
        repetition_penalty: Hugging Face's repetition penalty over prompt and completion (1.0: off).
    """

    group_size: int
    max_new_tokens: int
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    banned_token_ids: tuple[int, ...] = ()
    temperature: float = 1.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0


@runtime_checkable
class RolloutEngine(Protocol):
    """Samples G completions per prompt from the current policy."""

    def sync_weights(self, policy: torch.nn.Module) -> None:
        """Make the next `generate` sample from `policy`'s current weights (called before every rollout)."""
        ...

    def generate(
        self,
        batch: PromptBatch,
        sampling: SamplingSettings,
        *,
        features: list[torch.Tensor] | None = None,
        generator: torch.Generator | None = None,
    ) -> Rollouts:
        """`sampling.group_size` completions of every prompt of `batch`, on `batch`'s device.

        `features`: the prompts' vision-tower outputs when already computed (an engine may ignore them);
        `generator`: the random stream to draw from (resumable runs restore it)."""
        ...


class SamR1Engine:
    """samr1's engine: each prompt prefilled once, its G rows decoding together against that one cache
    (shared-prefix attention), finished rows leaving the batch, the host reading progress every few tokens.

    Args:
        tokenizer: decodes the completions' texts.
        check_every: read which rows have finished on the host every this many tokens (each read waits for
            the device); between reads, finished rows decode padding that is cut off.
        compact: at each read, drop finished rows from the batch so compute follows the live rows.
        static_cache: fixed-shape caches and rows instead (no compaction): the decode step keeps its shapes.
        compile_step: run that fixed-shape step through `torch.compile` (needs static_cache; the first
            rollout pays the compilation).
    """

    def __init__(
        self,
        tokenizer,
        check_every: int = 8,
        compact: bool = True,
        static_cache: bool = False,
        compile_step: bool = False,
    ) -> None:
        if check_every < 1:
            raise ValueError(f"check_every must be positive, got {check_every}")
        if compile_step and not static_cache:
            raise ValueError(
                "compile_step needs static_cache: the dynamic cache changes shape at every token"
            )
        self.tokenizer = tokenizer
        self.check_every = check_every
        self.compact = compact
        self.static_cache = static_cache
        self.compile_step = compile_step
        self.policy: torch.nn.Module | None = None

    def sync_weights(self, policy: torch.nn.Module) -> None:
        self.policy = policy  # decodes with the live module: nothing to copy

    def generate(
        self,
        batch: PromptBatch,
        sampling: SamplingSettings,
        *,
        features: list[torch.Tensor] | None = None,
        generator: torch.Generator | None = None,
    ) -> Rollouts:
        if self.policy is None:
            raise RuntimeError("SamR1Engine.generate before sync_weights: no policy to sample from")
        return generate_rollouts(
            self.policy,
            batch,
            self.tokenizer,
            group_size=sampling.group_size,
            max_new_tokens=sampling.max_new_tokens,
            eos_token_ids=list(sampling.eos_token_ids),
            pad_token_id=sampling.pad_token_id,
            banned_token_ids=list(sampling.banned_token_ids),
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            generator=generator,
            features=features,
            repetition_penalty=sampling.repetition_penalty,
            check_every=self.check_every,
            compact=self.compact,
            static_cache=self.static_cache,
            compile_step=self.compile_step,
        )
