"""Sampling G continuations from one shared prefill is statistically the same as G independent samples.

The reference is exact: the model's next-token distribution from a plain Hugging Face forward of the full,
unpadded sequence. Seeded, so each check gives the same verdict on every run.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats

from samr1.models.qwen2_5_vl.loading import load_policy, load_processor, special_token_ids
from samr1.models.qwen2_5_vl.prefix_cache import feed, prefill
from samr1.modules.prompting import PromptBuilder
from samr1.modules.rollout import generate_rollouts
from samr1.sample import SegSample

SIZES = [(56, 56), (112, 84)]  # two prompts of different lengths: the first is left-padded
QUERIES = ["the red circle", "the small blue square at the top left"]
N = 1500  # samples per prompt (the group size of the shared-prefix rollout)
TEMPERATURE = 0.05  # the tiny random model is nearly uniform at T = 1; this gives ~50 tokens of real mass
ALPHA = 1e-3


@pytest.fixture(scope="module")
def setup(tiny_checkpoints):
    path = tiny_checkpoints["policy"]
    model = load_policy(path)
    model.requires_grad_(False)
    processor = load_processor(path)
    rng = np.random.default_rng(0)
    samples = [
        SegSample(id=f"s{i}", query=q, image=Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
        for i, ((w, h), q) in enumerate(zip(SIZES, QUERIES))
    ]
    batch = PromptBuilder(processor, image_size=None)(samples)
    assert batch.attention_mask[0].sum() < batch.attention_mask[1].sum()
    eos, banned = special_token_ids(processor.tokenizer, model.get_output_embeddings().weight.shape[0])
    return model, processor.tokenizer, batch, eos, banned


def _image_inputs(batch, p: int) -> dict:
    starts = np.cumsum([0, *batch.image_grid_thw.prod(-1).tolist()])
    pixels = batch.pixel_values[starts[p] : starts[p + 1]]
    return {"pixel_values": pixels, "image_grid_thw": batch.image_grid_thw[p : p + 1]}


@torch.no_grad()
def exact_next(model, batch, p: int, prefix: list[int], banned, temperature: float, top_p: float):
    """p(next token | prompt p, prefix) after temperature and nucleus filtering, from a plain forward."""
    prompt = batch.input_ids[p][batch.attention_mask[p].bool()]
    seq = torch.cat([prompt, torch.tensor(prefix, dtype=prompt.dtype)]).unsqueeze(0)
    out = model(
        input_ids=seq,
        attention_mask=torch.ones_like(seq),
        mm_token_type_ids=(seq == model.config.image_token_id).int(),
        **_image_inputs(batch, p),
    )
    logits = out.logits[0, -1].double()
    logits[banned] = float("-inf")
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:  # the nucleus: the likeliest tokens until their mass reaches top_p
        sorted_p, order = probs.sort(descending=True)
        keep = sorted_p.cumsum(0) - sorted_p < top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
        probs = probs / probs.sum()
    return probs


def chi_square(observed: dict, expected: dict, n: int) -> float:
    """p-value of `observed` counts against `expected` probabilities; bins under 5 expected are pooled."""
    big = [k for k, v in expected.items() if v * n >= 5]
    obs = [observed.get(k, 0) for k in big]
    exp = [expected[k] * n for k in big]
    obs.append(n - sum(obs))
    exp.append(n - sum(exp))
    if exp[-1] < 1e-9:
        obs, exp = obs[:-1], exp[:-1]
    return float(stats.chisquare(obs, exp).pvalue)


def first_two_distribution(model, batch, p, banned, temperature, top_p, first_tokens: int = 3) -> dict:
    """Exact probabilities of (t1,) for every t1 and of (t1, t2) for the likeliest `first_tokens` t1."""
    p1 = exact_next(model, batch, p, [], banned, temperature, top_p)
    joint = {}
    for t1 in p1.topk(first_tokens).indices.tolist():
        p2 = exact_next(model, batch, p, [t1], banned, temperature, top_p)
        for t2 in (p2 * N >= 1).nonzero()[:, 0].tolist():
            joint[(t1, t2)] = float(p1[t1] * p2[t2])
    return {"first": {(t,): float(v) for t, v in enumerate(p1.tolist()) if v > 0}, "joint": joint}


@pytest.fixture(scope="module")
def rollouts(setup):
    """N continuations of 2 tokens per prompt from one prefill each, at two top_p settings."""
    model, tokenizer, batch, _, banned = setup
    out = {}
    for top_p in (1.0, 0.8):
        out[top_p] = generate_rollouts(
            model, batch, tokenizer, group_size=N, max_new_tokens=2, eos_token_ids=[],
            pad_token_id=tokenizer.pad_token_id, banned_token_ids=banned, temperature=TEMPERATURE, top_p=top_p,
            generator=torch.Generator().manual_seed(0),
        )  # fmt: skip
    return out


def _counts(ids: torch.Tensor, width: int) -> dict:
    counts: dict = {}
    for row in ids[:, :width].tolist():
        counts[tuple(row)] = counts.get(tuple(row), 0) + 1
    return counts


@pytest.mark.parametrize("top_p", [1.0, 0.8])
@pytest.mark.parametrize("prompt", [0, 1])
def test_shared_prefix_samples_follow_the_exact_distribution(setup, rollouts, prompt, top_p):
    model, _, batch, _, banned = setup
    r = rollouts[top_p]
    ids = r.completion_ids[r.prompt_index == prompt]
    assert ids.shape == (N, 2)
    exact = first_two_distribution(model, batch, prompt, banned, TEMPERATURE, top_p)
    p_first = chi_square(_counts(ids, 1), exact["first"], N)
    p_joint = chi_square(_counts(ids, 2), exact["joint"], N)
    assert p_first > ALPHA, f"first tokens: chi-square p={p_first:.2e} against the model's distribution"
    assert p_joint > ALPHA, f"token pairs: chi-square p={p_joint:.2e} against the model's distribution"
    if top_p < 1.0:  # nothing outside the nucleus is ever sampled
        support = {k[0] for k in exact["first"]}
        assert set(ids[:, 0].tolist()) <= support
    # The check has power: the same samples are rejected against the distribution at twice the temperature.
    wrong = first_two_distribution(model, batch, prompt, banned, 2 * TEMPERATURE, top_p, first_tokens=1)
    assert chi_square(_counts(ids, 1), wrong["first"], N) < 1e-6


@pytest.mark.parametrize("static_cache", [False, True], ids=["compacted", "static-cache"])
def test_rows_left_after_compaction_sample_the_exact_distribution(setup, static_cache):
    """The likeliest first token ends a completion: after the first check those rows leave the batch (rows
    of a prompt become unequal in number) and the others' second tokens still follow the model exactly;
    likewise with the fixed-shape stores, where every row stays in the batch."""
    model, tokenizer, batch, _, banned = setup
    exact = first_two_distribution(model, batch, 1, banned, TEMPERATURE, 1.0)
    stop = max(exact["first"], key=exact["first"].get)[0]
    r = generate_rollouts(
        model, batch, tokenizer, group_size=N, max_new_tokens=2, eos_token_ids=[stop],
        pad_token_id=tokenizer.pad_token_id, banned_token_ids=banned, temperature=TEMPERATURE, check_every=1,
        generator=torch.Generator().manual_seed(1), static_cache=static_cache,
    )  # fmt: skip
    ids = r.completion_ids[r.prompt_index == 1]
    assert ids.shape == (N, 2) and N // 10 < int((ids[:, 0] == stop).sum()) < N
    assert (ids[ids[:, 0] == stop, 1] == tokenizer.pad_token_id).all()
    # Pairs after other first tokens at their joint probabilities; the stopped rows fall in the pooled rest.
    expected = {pair: p for pair, p in exact["joint"].items() if pair[0] != stop}
    p_joint = chi_square(_counts(ids, 2), expected, N)
    assert p_joint > ALPHA, f"token pairs: chi-square p={p_joint:.2e} against the model's distribution"


def test_copies_of_a_prompt_are_independent(setup, rollouts):
    """Neighbouring copies share a cache, not their draws: their first tokens agree at the rate sum p^2."""
    model, _, batch, _, banned = setup
    r = rollouts[1.0]
    ids = r.completion_ids[r.prompt_index == 0][:, 0]
    p1 = exact_next(model, batch, 0, [], banned, TEMPERATURE, 1.0)
    same = int((ids[0::2] == ids[1::2]).sum())
    pairs = N // 2
    p_value = stats.binomtest(same, pairs, float((p1**2).sum())).pvalue
    assert p_value > ALPHA, f"{same}/{pairs} neighbouring copies agree; expected rate {(p1**2).sum():.3f}"


def test_greedy_equals_hf_generate(setup):
    """Temperature 0 gives Hugging Face `generate`'s greedy output token for token, in every copy."""
    model, tokenizer, batch, eos, banned = setup
    max_new = 12
    r = generate_rollouts(
        model, batch, tokenizer, group_size=2, max_new_tokens=max_new, eos_token_ids=eos,
        pad_token_id=tokenizer.pad_token_id, banned_token_ids=banned, temperature=0.0,
    )  # fmt: skip
    hf = model.generate(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        mm_token_type_ids=(batch.input_ids == model.config.image_token_id).int(),
        pixel_values=batch.pixel_values,
        image_grid_thw=batch.image_grid_thw,
        do_sample=False,
        max_new_tokens=max_new,
        min_new_tokens=0,
        suppress_tokens=banned,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
    )[:, batch.input_ids.shape[1] :]
    for row in range(len(r)):
        p = int(r.prompt_index[row])
        n = int(r.completion_mask[row].sum())
        assert r.completion_ids[row, :n].tolist() == hf[p, :n].tolist()
        if n < hf.shape[1]:  # both stopped at the same EOS
            assert hf[p, n - 1].item() in eos


@torch.no_grad()
def test_reserved_cache_decodes_like_a_growing_one(setup):
    """The in-place decoding cache (room for 3 tokens, then concatenation) gives the plain cache's states."""
    model, _, batch, _, _ = setup
    rows = torch.tensor([0, 0, 1])
    tokens = torch.randint(0, 1000, (3, 5), generator=torch.Generator().manual_seed(0))
    plain, reserved = prefill(model, batch).select(rows), prefill(model, batch).select(rows, reserve=3)
    for t in range(tokens.shape[1]):
        torch.testing.assert_close(
            feed(model, reserved, tokens[:, t : t + 1]), feed(model, plain, tokens[:, t : t + 1])
        )
    assert reserved.cache.get_seq_length() == plain.cache.get_seq_length()


def test_repetition_penalty_equals_hf_generate(setup):
    """Greedy with a repetition penalty gives `generate(repetition_penalty=...)`'s tokens for each prompt."""
    model, tokenizer, batch, eos, banned = setup
    max_new, penalty = 16, 1.5
    kwargs = dict(
        group_size=1, max_new_tokens=max_new, eos_token_ids=eos, pad_token_id=tokenizer.pad_token_id,
        banned_token_ids=banned, temperature=0.0,
    )  # fmt: skip
    r = generate_rollouts(model, batch, tokenizer, repetition_penalty=penalty, **kwargs)
    plain = generate_rollouts(model, batch, tokenizer, **kwargs)
    assert r.completion_ids.tolist() != plain.completion_ids.tolist()  # the penalty changes the answer
    for p in range(len(batch)):
        prompt = batch.input_ids[p][batch.attention_mask[p].bool()].unsqueeze(0)  # HF sees no padding
        hf = model.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            mm_token_type_ids=(prompt == model.config.image_token_id).int(),
            **_image_inputs(batch, p),
            do_sample=False,
            max_new_tokens=max_new,
            min_new_tokens=0,
            repetition_penalty=penalty,
            suppress_tokens=banned,
            eos_token_id=eos,
            pad_token_id=tokenizer.pad_token_id,
        )[0, prompt.shape[1] :]
        n = int(r.completion_mask[p].sum())
        assert r.completion_ids[p, :n].tolist() == hf[:n].tolist()
        assert n == len(hf) or hf[n - 1].item() in eos
