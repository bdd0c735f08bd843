"""The fast log-prob path (prompt prefilled once, cache shared, cached vision features, chunked log-softmax)
equals a plain Hugging Face forward of each full sequence: values, entropies and parameter gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from samr1.models.qwen2_5_vl.loading import load_policy, load_processor, special_token_ids
from samr1.models.qwen2_5_vl.prefix_cache import image_features
from samr1.modules.logprobs import completion_logprobs
from samr1.modules.prompting import PromptBuilder
from samr1.sample import SegSample

SIZES = [(56, 56), (112, 84)]  # two prompts whose images (and so prompt lengths) differ: left padding
QUERIES = ["the red circle", "the small blue square at the top left"]
PROMPT_INDEX = torch.tensor([0, 0, 1, 1, 1])  # completions per prompt, not in equal numbers
LENGTHS = [7, 3, 5, 1, 6]  # different completion lengths: rows are right-padded to T = 7


@pytest.fixture(scope="module")
def setup(tiny_checkpoints):
    path = tiny_checkpoints["policy"]
    model = load_policy(path)
    processor = load_processor(path)
    rng = np.random.default_rng(0)
    samples = [
        SegSample(id=f"s{i}", query=q, image=Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
        for i, ((w, h), q) in enumerate(zip(SIZES, QUERIES))
    ]
    batch = PromptBuilder(processor, image_size=None)(samples)
    assert batch.attention_mask[0].sum() < batch.attention_mask[1].sum()  # the first prompt is left-padded
    _, banned = special_token_ids(processor.tokenizer, model.get_output_embeddings().weight.shape[0])
    allowed = torch.tensor([t for t in range(len(processor.tokenizer)) if t not in set(banned)])
    gen = torch.Generator().manual_seed(0)
    ids = allowed[torch.randint(len(allowed), (len(LENGTHS), max(LENGTHS)), generator=gen)]
    mask = torch.arange(max(LENGTHS)).unsqueeze(0) < torch.tensor(LENGTHS).unsqueeze(1)
    ids = ids.masked_fill(~mask, processor.tokenizer.pad_token_id)
    return model, batch, ids, mask


def plain_logprobs(model, batch, ids, mask, temperature=1.0):
    """Reference: one unpadded `model(...)` per completion over image + prompt + completion, full log-softmax."""
    patches = batch.image_grid_thw.prod(-1).tolist()
    starts = np.cumsum([0, *patches])
    logps, ents = torch.zeros(ids.shape), torch.zeros(ids.shape)
    for row, p in enumerate(PROMPT_INDEX.tolist()):
        prompt = batch.input_ids[p][batch.attention_mask[p].bool()]
        n = int(mask[row].sum())
        seq = torch.cat([prompt, ids[row, :n]]).unsqueeze(0)
        out = model(
            input_ids=seq,
            attention_mask=torch.ones_like(seq),
            mm_token_type_ids=(seq == model.config.image_token_id).int(),  # without it HF uses 1-D positions
            pixel_values=batch.pixel_values[starts[p] : starts[p + 1]],
            image_grid_thw=batch.image_grid_thw[p : p + 1],
        )
        logits = out.logits[0, len(prompt) - 1 : len(prompt) - 1 + n].float() / temperature
        logp_all = torch.log_softmax(logits, dim=-1)
        logps[row, :n] = logp_all.gather(-1, ids[row, :n, None])[:, 0]
        ents[row, :n] = -(logp_all.exp() * logp_all).sum(-1)
    return logps, ents


@pytest.mark.parametrize("temperature, chunk", [(1.0, 64), (0.05, 2)])  # a low temperature magnifies errors
def test_fast_path_equals_plain_forward(setup, temperature, chunk):
    model, batch, ids, mask = setup
    with torch.no_grad():
        ref, ref_ent = plain_logprobs(model, batch, ids, mask, temperature)
        kwargs = dict(temperature=temperature, chunk=chunk)
        fast, fast_ent = completion_logprobs(model, batch, ids, PROMPT_INDEX, **kwargs)
        cached, _ = completion_logprobs(
            model, batch, ids, PROMPT_INDEX, features=image_features(model, batch), **kwargs
        )
    torch.testing.assert_close(fast[mask], ref[mask], rtol=0, atol=1e-5)
    torch.testing.assert_close(fast_ent[mask], ref_ent[mask], rtol=0, atol=1e-5)
    torch.testing.assert_close(cached[mask], ref[mask], rtol=0, atol=1e-5)


def test_subset_of_prompts(setup):
    """Completions answering only the second prompt: that prompt alone is prefilled."""
    model, batch, ids, mask = setup
    rows = (PROMPT_INDEX == 1).nonzero()[:, 0]
    with torch.no_grad():
        ref, _ = plain_logprobs(model, batch, ids, mask)
        fast, _ = completion_logprobs(model, batch, ids[rows], PROMPT_INDEX[rows], chunk=3)
    torch.testing.assert_close(fast[mask[rows]], ref[rows][mask[rows]], rtol=0, atol=1e-5)


@pytest.mark.parametrize("cached_features", [False, True])
def test_gradients_equal_plain_forward(setup, cached_features):
    """d(weighted sum of completion log-probs)/d(parameters): fast path (checkpointed chunks) vs plain forward."""
    model, batch, ids, mask = setup
    weights = torch.linspace(-1.0, 1.0, ids.numel()).view(ids.shape) * mask
    params = [p for p in model.parameters() if p.requires_grad]

    model.zero_grad()
    ref, _ = plain_logprobs(model, batch, ids, mask)
    (ref * weights).sum().backward()
    ref_grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]

    model.zero_grad()
    feats = None
    if cached_features:  # frozen vision tower: no-grad features, so the vision tower gets no gradient
        with torch.no_grad():
            feats = image_features(model, batch)
    fast, _ = completion_logprobs(model, batch, ids, PROMPT_INDEX, chunk=2, features=feats)
    (fast * weights).sum().backward()
    visual = {id(p) for p in model.model.visual.parameters()}
    compared = 0
    for p, g in zip(params, ref_grads):
        if cached_features and id(p) in visual:
            assert p.grad is None
            continue
        got = p.grad if p.grad is not None else torch.zeros_like(p)
        torch.testing.assert_close(got, g, rtol=1e-4, atol=1e-5)
        compared += 1
    assert compared > 0
    model.zero_grad()
