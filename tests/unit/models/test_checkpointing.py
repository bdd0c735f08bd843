"""Activation checkpointing keeps the shared-prefix semantics: log-probs and gradients equal those without it,
the layers really are recomputed, and a training step with a reference starts at KL 0."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from samr1.models.qwen2_5_vl.checkpointing import enable_activation_checkpointing
from samr1.models.qwen2_5_vl.loading import load_policy, load_processor
from samr1.modules.logprobs import completion_logprobs
from samr1.modules.prompting import PromptBuilder
from samr1.sample import SegSample

PROMPT_INDEX = torch.tensor([0, 0, 1, 1, 1])
LENGTHS = [7, 2, 5, 1, 6]


@pytest.fixture(scope="module")
def inputs(tiny_checkpoints):
    processor = load_processor(tiny_checkpoints["policy"])
    rng = np.random.default_rng(0)
    sizes = [(56, 56), (112, 84)]  # prompts of different lengths: the first is left-padded
    samples = [
        SegSample(id=f"s{i}", query=q, image=Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
        for i, ((w, h), q) in enumerate(zip(sizes, ["the red circle", "the small square at the top left"]))
    ]
    batch = PromptBuilder(processor, image_size=None)(samples)
    ids = torch.randint(100, 1000, (len(LENGTHS), max(LENGTHS)), generator=torch.Generator().manual_seed(0))
    mask = torch.arange(max(LENGTHS)).unsqueeze(0) < torch.tensor(LENGTHS).unsqueeze(1)
    return batch, ids, mask


def _policy(tiny_checkpoints, checkpointed: bool):
    model = load_policy(tiny_checkpoints["policy"])  # float32
    model.train()
    if checkpointed:
        enable_activation_checkpointing(model)
    return model


def _logprobs_and_grads(model, batch, ids, mask):
    """Log-probs, entropies and the parameter gradients of a weighted sum of both, vision tower trainable."""
    logp, entropy = completion_logprobs(model, batch, ids, PROMPT_INDEX, chunk=3)
    weights = torch.linspace(-1.0, 1.0, ids.numel()).view(ids.shape) * mask
    ((logp + 0.1 * entropy) * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logp.detach(), entropy.detach(), grads


def test_checkpointed_logprobs_and_gradients_equal_plain(tiny_checkpoints, inputs):
    batch, ids, mask = inputs
    plain = _logprobs_and_grads(_policy(tiny_checkpoints, False), batch, ids, mask)
    checkpointed = _logprobs_and_grads(_policy(tiny_checkpoints, True), batch, ids, mask)
    torch.testing.assert_close(checkpointed[0][mask], plain[0][mask], rtol=0, atol=1e-5)
    torch.testing.assert_close(checkpointed[1][mask], plain[1][mask], rtol=0, atol=1e-5)
    assert checkpointed[2].keys() == plain[2].keys()
    names = list(plain[2])
    # Gradients reach the vision tower, the prompt's layers (through the cached keys/values) and lm_head.
    assert any(n.startswith("model.visual.") for n in names) and any("lm_head" in n for n in names)
    for name in names:
        torch.testing.assert_close(checkpointed[2][name], plain[2][name], rtol=1e-4, atol=1e-5, msg=name)


def _count_passes(model, batch, ids, mask) -> tuple[dict[str, int], int]:
    """Attention calls of the decoder layers and vision blocks over forward + backward, and the bytes the
    forward saved for the backward."""
    calls = {"attention": 0, "vision": 0}

    def counter(key):
        return lambda *args: calls.__setitem__(key, calls[key] + 1)

    for layer in model.model.language_model.layers:
        layer.self_attn.register_forward_hook(counter("attention"))
    for block in model.model.visual.blocks:
        block.attn.register_forward_hook(counter("vision"))
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logp, _ = completion_logprobs(model, batch, ids, PROMPT_INDEX, chunk=3)
    (logp * mask).sum().backward()
    return calls, sum(saved)


def test_layers_are_recomputed_and_fewer_activations_are_kept(tiny_checkpoints, inputs):
    batch, ids, mask = inputs
    plain_calls, plain_bytes = _count_passes(_policy(tiny_checkpoints, False), batch, ids, mask)
    model = _policy(tiny_checkpoints, True)
    calls, saved_bytes = _count_passes(model, batch, ids, mask)
    layers, blocks = len(model.model.language_model.layers), len(model.model.visual.blocks)
    # Without: prefill + completions per decoder layer, one vision pass. With: each once more in the backward.
    assert plain_calls == {"attention": 2 * layers, "vision": blocks}
    assert calls == {"attention": 4 * layers, "vision": 2 * blocks}
    assert saved_bytes < plain_bytes / 2, (saved_bytes, plain_bytes)


def test_huggingface_decoder_checkpointing_is_refused(tiny_checkpoints):
    model = load_policy(tiny_checkpoints["policy"])
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    with pytest.raises(ValueError, match="drops the shared-prefix KV cache"):
        enable_activation_checkpointing(model)


def test_no_grad_decoding_is_unchanged(tiny_checkpoints, inputs):
    """Generation and old/reference log-probs run without gradients: the checkpointed layers run as they are."""
    batch, ids, mask = inputs
    with torch.no_grad():
        plain, _ = completion_logprobs(_policy(tiny_checkpoints, False), batch, ids, PROMPT_INDEX)
        checkpointed, _ = completion_logprobs(_policy(tiny_checkpoints, True), batch, ids, PROMPT_INDEX)
    assert torch.equal(plain[mask], checkpointed[mask])


class FirstKL(L.Callback):
    def __init__(self) -> None:
        self.kl: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.kl.append(float(trainer.callback_metrics["train/kl"]))


def test_first_step_kl_is_zero_with_checkpointing(tiny_checkpoints, cpu_trainer):
    # Policy and reference start equal, so the first update's KL is 0 unless its log-probs lose the prompt
    # (Hugging Face's checkpointing: 4.04 on this model).
    from samr1.datamodules import SyntheticShapesDataModule
    from samr1.modules.module import GRPOModule

    L.seed_everything(0)
    module = GRPOModule(
        model_path=tiny_checkpoints["policy"],
        image_size=(56, 56),
        group_size=4,
        max_new_tokens=8,
        kl_coef=0.1,
        gradient_checkpointing=True,
        freeze_vision=False,
    )
    data = SyntheticShapesDataModule(
        num_train=8, image_size=56, batch_size=2, val_split=None, test_split=None
    )
    history = FirstKL()
    cpu_trainer(max_steps=1, callbacks=[history]).fit(module, datamodule=data)
    assert len(history.kl) == 1
    assert history.kl[0] == pytest.approx(0.0, abs=1e-6)
