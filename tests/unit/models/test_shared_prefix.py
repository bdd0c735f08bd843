"""Shared-prefix attention equals attention over each row's own copy of its prompt's cache: the attention
alone (values and gradients, GQA, left padding, irregular rows), and decoding through the tiny policy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from samr1.models.qwen2_5_vl.loading import load_policy, load_processor
from samr1.models.qwen2_5_vl.prefix_cache import feed, model_parts, prefill
from samr1.models.qwen2_5_vl.shared_prefix import (
    SharedPrefix,
    _partial_softmax,
    enable_shared_prefix,
    feed_shared,
    fused_decode_attention,
    prefix_suffix_attention,
    share_prefix,
)
from samr1.modules.prompting import PromptBuilder
from samr1.sample import SegSample


def reference_attention(q, k, v, kp, vp, prefix_mask, rows):
    """SDPA over [the row's copy of its prompt's keys; its own keys], padding and the future masked."""
    n, hq, t, _ = q.shape
    s = k.shape[2]
    keys = torch.cat([kp[rows], k], dim=2).repeat_interleave(hq // k.shape[1], dim=1)
    values = torch.cat([vp[rows], v], dim=2).repeat_interleave(hq // k.shape[1], dim=1)
    causal = torch.ones(t, s, dtype=torch.bool).tril(diagonal=s - t)
    allowed = torch.cat([prefix_mask[rows][:, None, :].expand(n, t, -1), causal.expand(n, t, s)], dim=-1)
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=allowed.unsqueeze(1))


@pytest.mark.parametrize(
    "rows, t, s",
    [
        ([0, 0, 0, 1, 1, 1], 1, 4),  # decoding: one query, three earlier own tokens; rows in equal groups
        ([0, 0, 1, 1, 1], 5, 5),  # one pass over whole completions; unequal groups
        ([1, 0, 1, 0], 3, 6),  # rows not sorted by prompt; queries after earlier tokens
    ],
)
def test_attention_equals_attention_over_copies(rows, t, s):
    g = torch.Generator().manual_seed(0)
    rows = torch.tensor(rows)
    n, p, hq, hkv, lp, d = len(rows), 2, 4, 2, 7, 8
    q = torch.randn(n, hq, t, d, generator=g, requires_grad=True)
    k, v = (torch.randn(n, hkv, s, d, generator=g, requires_grad=True) for _ in range(2))
    kp, vp = (torch.randn(p, hkv, lp, d, generator=g, requires_grad=True) for _ in range(2))
    prefix_mask = torch.ones(p, lp, dtype=torch.bool)
    prefix_mask[0, :3] = False  # prompt 0 is left-padded
    shared = SharedPrefix.of([(kp, vp)], prefix_mask, rows)
    assert shared.regular == (rows.tolist() == [0, 0, 0, 1, 1, 1])
    ours = prefix_suffix_attention(q, k, v, shared, 0, d**-0.5)
    ref = reference_attention(q, k, v, kp, vp, prefix_mask, rows)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    weights = torch.randn(ref.shape, generator=g)
    grads = torch.autograd.grad((ours * weights).sum(), (q, k, v, kp, vp))
    ref_grads = torch.autograd.grad((ref * weights).sum(), (q, k, v, kp, vp))
    for ours_grad, ref_grad in zip(grads, ref_grads):  # kp, vp: summed over the rows sharing them
        torch.testing.assert_close(ours_grad, ref_grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("rows", [[0, 0, 0, 1, 1, 1], [1, 0, 1, 1, 0]], ids=["equal-groups", "unequal"])
def test_fused_decoding_attention_equals_attention_over_copies(rows):
    """Decoding on CPU (one query per row): the flash kernel's two parts merged by their log-sum-exps."""
    g = torch.Generator().manual_seed(2)
    rows = torch.tensor(rows)
    n, p, hq, hkv, lp, d, s = len(rows), 2, 4, 2, 9, 8, 3
    q = torch.randn(n, hq, 1, d, generator=g)
    k, v = (torch.randn(n, hkv, s, d, generator=g) for _ in range(2))
    kp, vp = (torch.randn(p, hkv, lp, d, generator=g) for _ in range(2))
    prefix_mask = torch.ones(p, lp, dtype=torch.bool)
    prefix_mask[1, :4] = False
    shared = SharedPrefix.of([(kp, vp)], prefix_mask, rows)
    ref = reference_attention(q, k, v, kp, vp, prefix_mask, rows)
    torch.testing.assert_close(fused_decode_attention(q, k, v, shared, 0, d**-0.5), ref, rtol=1e-5, atol=1e-6)
    # A fixed-shape store of 5 own positions with 3 written (static_decode.py): the unwritten 2 are masked.
    store = [torch.cat([x, torch.randn(n, hkv, 2, d, generator=g)], dim=2) for x in (k, v)]
    shared.suffix_end = torch.tensor([s])
    torch.testing.assert_close(
        fused_decode_attention(q, *store, shared, 0, d**-0.5), ref, rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(
        prefix_suffix_attention(q, *store, shared, 0, d**-0.5), ref, rtol=1e-5, atol=1e-6
    )


def test_bf16_scores_are_float32_products():
    """bf16 queries and keys give the float32 scores of their exact products (as SDPA's kernels accumulate),
    not scores rounded to bf16: the maxima equal those of float32 copies of the same values exactly."""
    g = torch.Generator().manual_seed(0)
    q = (4 * torch.randn(2, 3, 5, 8, generator=g)).bfloat16()
    k, v = (torch.randn(2, 3, 7, 8, generator=g).bfloat16() for _ in range(2))
    masked = torch.zeros(5, 7, dtype=torch.bool)
    _, top, total = _partial_softmax(q, k, v, 0.35, masked)
    _, top32, total32 = _partial_softmax(q.float(), k.float(), v.float(), 0.35, masked)
    assert top.dtype == torch.float32
    torch.testing.assert_close(top, top32, rtol=0, atol=0)
    torch.testing.assert_close(total, total32, rtol=0, atol=0)
    rounded = (torch.matmul(q, k.transpose(-1, -2)).float() * 0.35).amax(dim=-1, keepdim=True)
    assert not torch.equal(rounded, top32)  # bf16 scores would differ


@pytest.fixture(scope="module")
def setup(tiny_checkpoints):
    path = tiny_checkpoints["policy"]
    model = load_policy(path)
    model.requires_grad_(False)
    processor = load_processor(path)
    rng = np.random.default_rng(0)
    samples = [
        SegSample(id=f"s{i}", query=q, image=Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
        for i, ((w, h), q) in enumerate(zip([(56, 56), (112, 84)], ["the red circle", "a small blue square"]))
    ]
    return model, PromptBuilder(processor, image_size=None)(samples)


@torch.no_grad()
def test_decoding_equals_the_copied_cache(setup):
    """Step by step, the shared prefix (own tokens in place for 3 steps, then concatenated) gives the hidden
    states of per-row copies of the prompt cache."""
    model, batch = setup
    rows = torch.tensor([0, 1, 1, 0, 1])
    tokens = torch.randint(0, 1000, (len(rows), 5), generator=torch.Generator().manual_seed(0))
    copied = prefill(model, batch).select(rows)
    shared = share_prefix(model, prefill(model, batch), rows, reserve=3)
    torch.testing.assert_close(shared.last_hidden, copied.last_hidden)
    for t in range(tokens.shape[1]):
        step = tokens[:, t : t + 1]
        torch.testing.assert_close(
            feed_shared(model, shared, step), feed(model, copied, step), rtol=1e-4, atol=1e-5
        )
    torch.testing.assert_close(shared.next_position, copied.next_position)
    assert shared.cache.get_seq_length() == tokens.shape[1]  # only the rows' own tokens are stored per row


@pytest.mark.parametrize("keep", [[1, 3, 4], [1, 2, 4]], ids=["both-prompts", "prompt-0-dropped"])
@torch.no_grad()
def test_selected_rows_continue_like_their_copies(setup, keep):
    """Rows kept after 3 decoded tokens (finished rows leave the batch) continue exactly like the same rows of
    the copied caches; with every row of prompt 0 gone, its prefix leaves too."""
    model, batch = setup
    rows = torch.tensor([0, 1, 1, 0, 1])
    tokens = torch.randint(0, 1000, (len(rows), 5), generator=torch.Generator().manual_seed(1))
    copied = prefill(model, batch).select(rows)
    shared = share_prefix(model, prefill(model, batch), rows, reserve=5)
    for t in range(3):
        feed_shared(model, shared, tokens[:, t : t + 1])
        feed(model, copied, tokens[:, t : t + 1])
    keep = torch.tensor(keep)
    shared, copied = shared.select(keep), copied.select(keep, reserve=2)
    assert shared.prefix.prefix_mask.shape[0] == len(set(rows[keep].tolist()))
    for t in range(3, 5):
        step = tokens[keep, t : t + 1]
        torch.testing.assert_close(
            feed_shared(model, shared, step), feed(model, copied, step), rtol=1e-4, atol=1e-5
        )
    assert shared.cache.get_seq_length() == 5


@torch.no_grad()
def test_other_calls_keep_the_original_attention(tiny_checkpoints, setup):
    """Once enabled, forwards with ordinary masks (prefill, plain forwards) go to the wrapped sdpa unchanged."""
    _, batch = setup
    model = load_policy(tiny_checkpoints["policy"])
    _, decoder, _ = model_parts(model)
    assert decoder.config._attn_implementation == "sdpa"
    before = prefill(model, batch).last_hidden
    enable_shared_prefix(model)
    assert decoder.config._attn_implementation == "samr1_shared_prefix:sdpa"
    torch.testing.assert_close(prefill(model, batch).last_hidden, before, rtol=0, atol=0)


def test_unsupported_attention_is_refused(tiny_checkpoints):
    model = load_policy(tiny_checkpoints["policy"])
    _, decoder, _ = model_parts(model)
    decoder.config._attn_implementation = "flex_attention"
    with pytest.raises(ValueError, match="flex_attention"):
        enable_shared_prefix(model)
