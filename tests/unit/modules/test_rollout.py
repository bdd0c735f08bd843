"""Generation: vision special tokens are never sampled; masks and truncation follow the first EOS."""

from __future__ import annotations

import math

import pytest
import torch

from samr1.datamodules.synthetic import make_shapes_sample
from samr1.models.qwen2_5_vl.loading import load_policy, load_processor, special_token_ids
from samr1.models.qwen2_5_vl.prefix_cache import model_parts
from samr1.modules import rollout
from samr1.modules.prompting import PromptBuilder
from samr1.modules.rollout import generate_rollouts


def _setup(tiny_checkpoints):
    model = load_policy(tiny_checkpoints["policy"]).eval()
    processor = load_processor(tiny_checkpoints["policy"])
    samples = [make_shapes_sample(i, "test", 0, 56, 2, 3) for i in range(2)]
    return model, processor, PromptBuilder(processor, image_size=(56, 56))(samples)


def test_special_ids_ban_vision_tokens_and_padding_ids(tiny_checkpoints):
    model, processor, _ = _setup(tiny_checkpoints)
    vocab = processor.tokenizer.get_vocab()
    vocab_size = len(processor.tokenizer) + 5  # real checkpoints pad the embedding past the tokenizer
    eos, banned = special_token_ids(processor.tokenizer, vocab_size)
    assert eos[:2] == [vocab["<|im_end|>"], vocab["<|endoftext|>"]]
    for token in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|im_start|>"):
        assert vocab[token] in banned
    assert set(range(len(processor.tokenizer), vocab_size)) <= set(banned)


def test_banned_tokens_are_never_sampled_even_when_likely(tiny_checkpoints):
    model, processor, batch = _setup(tiny_checkpoints)
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    with torch.no_grad():  # make <|image_pad|> the overwhelmingly likely next token
        model.lm_head.weight[image_pad] *= 0
        model.lm_head.weight[image_pad] += 50 * model.lm_head.weight.abs().max()
    _, banned = special_token_ids(processor.tokenizer, model.lm_head.weight.shape[0])
    rollouts = generate_rollouts(
        model,
        batch,
        processor.tokenizer,
        group_size=4,
        max_new_tokens=12,
        eos_token_ids=[],
        pad_token_id=processor.tokenizer.pad_token_id,
        banned_token_ids=banned,
        generator=torch.Generator().manual_seed(0),
    )
    assert not torch.isin(rollouts.completion_ids, torch.tensor(banned)).any()
    assert rollouts.truncated.all() and rollouts.completion_mask.all()


def test_mask_covers_up_to_the_first_eos(tiny_checkpoints):
    model, processor, batch = _setup(tiny_checkpoints)
    tok = processor.tokenizer
    rollouts = generate_rollouts(
        model,
        batch,
        tok,
        group_size=8,
        max_new_tokens=40,
        eos_token_ids=[tok.convert_tokens_to_ids("a")],
        pad_token_id=tok.pad_token_id,
        generator=torch.Generator().manual_seed(1),
    )
    eos = tok.convert_tokens_to_ids("a")
    for ids, mask, truncated in zip(rollouts.completion_ids, rollouts.completion_mask, rollouts.truncated):
        hits = (ids == eos).nonzero().flatten()
        if truncated:
            assert hits.numel() == 0 and mask.all()
        else:
            first = int(hits[0])
            assert mask[: first + 1].all() and not mask[first + 1 :].any()


def test_checking_for_the_end_every_k_tokens_gives_the_same_completions(tiny_checkpoints):
    """Greedy: reading `finished` every 8 tokens (extra padding decoded, then cut) changes nothing."""
    model, processor, batch = _setup(tiny_checkpoints)
    tok = processor.tokenizer

    def greedy(eos, k):
        return generate_rollouts(
            model, batch, tok, group_size=2, max_new_tokens=30, eos_token_ids=eos, pad_token_id=tok.pad_token_id,
            temperature=0.0, check_every=k,
        )  # fmt: skip

    probe = greedy([tok.pad_token_id], 1)
    eos = [int(probe.completion_ids[0, 4]), int(probe.completion_ids[2, 9])]  # rows stop at different steps
    runs = [greedy(eos, k) for k in (1, 8)]
    assert not runs[0].truncated.all()
    assert runs[0].completion_ids.shape[1] < 30
    assert torch.equal(runs[0].completion_ids, runs[1].completion_ids)
    assert torch.equal(runs[0].completion_mask, runs[1].completion_mask)
    assert runs[0].texts == runs[1].texts


def _stop_tokens(probe, check_every: int) -> tuple[list[int], int, int]:
    """Two stop tokens that end prompt 0's rows and prompt 1's rows at different lengths, in different check
    windows, from a greedy probe (a prompt's greedy copies agree): (tokens, length 0, length 1)."""
    a, b = probe.completion_ids[0].tolist(), probe.completion_ids[3].tolist()
    for i in range(2, len(a) - 1):
        if a[i] in a[:i]:
            continue
        for j in range(i + 1, len(b) - 1):
            window_0, window_1 = math.ceil((i + 1) / check_every), math.ceil((j + 1) / check_every)
            if b[j] in b[:j] or b[j] in a[: i + 1] or a[i] in b[: j + 1] or window_0 == window_1:
                continue
            return [a[i], b[j]], i + 1, j + 1
    raise AssertionError("the probe's two prompts never diverge: no stop tokens to choose")


def _decoded_rows(model) -> tuple[list[int], object]:
    """The batch size of every decoder call (a forward pre-hook) and the hook's handle."""
    sizes: list[int] = []
    _, decoder, _ = model_parts(model)

    def record(module, args, kwargs):
        ids = kwargs.get("input_ids")
        sizes.append(ids.shape[0] if ids is not None else kwargs["inputs_embeds"].shape[0])

    return sizes, decoder.register_forward_pre_hook(record, with_kwargs=True)


@pytest.mark.parametrize("shared", [True, False], ids=["shared-prefix", "copied-cache"])
def test_finished_rows_leave_the_batch_and_greedy_completions_are_unchanged(
    tiny_checkpoints, monkeypatch, shared
):
    """Compaction (finished rows dropped at each check) decodes only the live rows, with identical output."""
    model, processor, batch = _setup(tiny_checkpoints)
    tok = processor.tokenizer
    if not shared:  # the per-row copies of the prompt cache (attention kernels other than sdpa/eager)
        monkeypatch.setattr(rollout, "shared_prefix_supported", lambda model, state: False)

    def greedy(eos, compact):
        return generate_rollouts(
            model, batch, tok, group_size=3, max_new_tokens=24, eos_token_ids=eos, pad_token_id=tok.pad_token_id,
            temperature=0.0, check_every=2, compact=compact,
        )  # fmt: skip

    probe = greedy([tok.pad_token_id], False)
    eos, short, long = _stop_tokens(probe, check_every=2)
    plain = greedy(eos, False)
    sizes, hook = _decoded_rows(model)
    compacted = greedy(eos, True)
    hook.remove()
    assert plain.lengths.tolist() == [short] * 3 + [long] * 3
    assert torch.equal(compacted.completion_ids, plain.completion_ids)
    assert torch.equal(compacted.completion_mask, plain.completion_mask)
    assert compacted.texts == plain.texts and torch.equal(compacted.truncated, plain.truncated)
    # Prefill (2 prompts), 6 rows until the check that follows prompt 0's last token drops its rows, then 3
    # rows until the check that follows prompt 1's last token (checks after every 2nd token).
    first_check, last_check = 2 * math.ceil(short / 2), 2 * math.ceil(long / 2)
    assert sizes == [2] + [6] * (first_check - 1) + [3] * (last_check - first_check)


def _greedy_kwargs(tok) -> dict:
    return dict(
        group_size=3, max_new_tokens=24, pad_token_id=tok.pad_token_id, temperature=0.0, check_every=2
    )


def test_static_cache_decodes_like_the_dynamic_one(tiny_checkpoints, monkeypatch):
    """Fixed-shape stores (the compilable step): the same greedy completions, every row to the last check."""
    model, processor, batch = _setup(tiny_checkpoints)
    tok = processor.tokenizer
    probe = generate_rollouts(model, batch, tok, eos_token_ids=[tok.pad_token_id], **_greedy_kwargs(tok))
    eos, short, long = _stop_tokens(probe, check_every=2)
    dynamic = generate_rollouts(model, batch, tok, eos_token_ids=eos, **_greedy_kwargs(tok))
    sizes, hook = _decoded_rows(model)
    static = generate_rollouts(model, batch, tok, eos_token_ids=eos, static_cache=True, **_greedy_kwargs(tok))
    hook.remove()
    assert static.lengths.tolist() == [short] * 3 + [long] * 3
    assert torch.equal(static.completion_ids, dynamic.completion_ids) and static.texts == dynamic.texts
    assert sizes == [2] + [6] * (2 * math.ceil(long / 2) - 1)  # no compaction: the shapes stay fixed
    with pytest.raises(ValueError, match="compile_step needs static_cache"):
        generate_rollouts(model, batch, tok, eos_token_ids=eos, compile_step=True, **_greedy_kwargs(tok))
    monkeypatch.setattr(rollout, "shared_prefix_supported", lambda model, state: False)
    with pytest.raises(ValueError, match="static_cache needs shared-prefix attention"):
        generate_rollouts(model, batch, tok, eos_token_ids=eos, static_cache=True, **_greedy_kwargs(tok))


@pytest.mark.slow  # torch.compile of the tiny model's decode step: ~35 s on the 2-core CPU
def test_compiled_static_step_decodes_like_the_dynamic_one(tiny_checkpoints):
    model, processor, batch = _setup(tiny_checkpoints)
    tok = processor.tokenizer
    probe = generate_rollouts(model, batch, tok, eos_token_ids=[tok.pad_token_id], **_greedy_kwargs(tok))
    eos, _, _ = _stop_tokens(probe, check_every=2)
    dynamic = generate_rollouts(model, batch, tok, eos_token_ids=eos, **_greedy_kwargs(tok))
    for _ in range(2):  # compiled once, then reused
        compiled = generate_rollouts(
            model, batch, tok, eos_token_ids=eos, static_cache=True, compile_step=True, **_greedy_kwargs(tok)
        )
        assert (
            torch.equal(compiled.completion_ids, dynamic.completion_ids) and compiled.texts == dynamic.texts
        )
