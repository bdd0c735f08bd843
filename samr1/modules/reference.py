"""The reference policy for the KL term: a frozen copy of the initial policy.

The policy module holds it outside its registered children, so it is neither checkpointed nor wrapped by DDP;
it is reloaded from `model_path` instead.
"""

from __future__ import annotations

import torch
from torch import nn

from samr1.models.qwen2_5_vl.loading import load_policy
from samr1.modules.logprobs import completion_logprobs
from samr1.modules.prompting import PromptBatch


class ReferenceModel(nn.Module):
    """Frozen copy of the policy's initial weights; loaded only when the KL coefficient is positive.

    `dtype` is its storage dtype: GRPOModule passes its compute dtype (bf16 on GPUs: no optimiser state, so
    nothing to round away); under FSDP2 it is sharded like the policy (`sharding.shard_policy`).
    """

    def __init__(self, model_path: str, dtype: str = "float32", attn_implementation: str = "sdpa") -> None:
        super().__init__()
        self.model = load_policy(model_path, dtype, attn_implementation)
        self.model.requires_grad_(False)
        self.model.eval()

    def train(self, mode: bool = True) -> ReferenceModel:
        return super().train(False)  # always in eval mode

    @torch.no_grad()
    def logprobs(
        self, batch: PromptBatch, completion_ids, prompt_index, temperature: float = 1.0, features=None
    ) -> torch.Tensor:
        logp, _ = completion_logprobs(
            self.model, batch, completion_ids, prompt_index, temperature=temperature, features=features
        )
        return logp


class AdapterDisabledReference:
    """With LoRA the reference is the policy itself with its adapters switched off: no second copy in memory."""

    def __init__(self, policy_getter) -> None:
        self._policy = policy_getter  # a callable, so the reference follows the module's current policy

    def to(self, device) -> AdapterDisabledReference:
        return self

    @torch.no_grad()
    def logprobs(
        self, batch: PromptBatch, completion_ids, prompt_index, temperature: float = 1.0, features=None
    ) -> torch.Tensor:
        policy = self._policy()
        with policy.disable_adapter():
            logp, _ = completion_logprobs(
                policy, batch, completion_ids, prompt_index, temperature=temperature, features=features
            )
        return logp
