"""Offline generator of tiny, randomly initialised but complete checkpoints.

`write_tiny_checkpoints(out_dir)` writes
  <out_dir>/qwen2_5_vl/   a Qwen2.5-VL model directory (config, safetensors, byte-level BPE tokenizer with the
                          Qwen chat special tokens and chat template, image and video processors)
  <out_dir>/sam_vit_tiny.pth   a segment-anything state dict for `model_type="vit_tiny"`
They load through exactly the same code as real weights (`from_pretrained`, `load_sam_checkpoint`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path

import torch

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Qwen2.5-VL's chat template, reduced to what samr1 sends (system/user/assistant, text and image parts).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Words the tiny tokenizer should know as whole tokens; it is trained on these plus answer-shaped strings.
_CORPUS_WORDS = (
    "the a of at in on with and or is to find segment object image query please output one bbox points "
    "two largest inscribed circles inside interested JSON format think answer reasoning first then final "
    "red green blue yellow purple orange white black small large big circle square triangle rectangle "
    "top bottom left right middle centre center upper lower shape coloured colored which what where"
).split()

TINY_SIZES: dict[str, dict] = {
    # ~0.2M parameters: the unit and end-to-end tests on 2 CPU cores.
    "tiny": dict(
        hidden=64, layers=2, heads=4, kv_heads=2, inter=128, v_hidden=32, v_depth=2, v_heads=2, vocab=1024
    ),
    # ~0.85M parameters, one token per digit (as Qwen2's tokenizer): the demo's and the learning test's policy.
    # Rotary base 100, not Qwen's 1e6: multimodal RoPE gives an image token's row and column only the lower
    # frequencies of each head (here 6 + 6 of 16 pairs), which at base 1e6 turn by under 0.1 rad (rows) and
    # 0.001 rad (columns) across the 4 x 4 token grid, so attention barely tells rows and cannot tell columns
    # apart; at base 100 they turn by 0.2-1 rad (rows) and 0.04-0.17 rad (columns). The other sizes keep 1e6.
    "demo": dict(
        rope_theta=100.0,
        hidden=128,
        layers=3,
        heads=4,
        kv_heads=2,
        inter=256,
        v_hidden=64,
        v_depth=2,
        v_heads=2,
        vocab=1024,
        individual_digits=True,
    ),
    # ~10M parameters: the throughput benchmark's policy.
    "small": dict(
        hidden=384, layers=6, heads=6, kv_heads=2, inter=1024, v_hidden=128, v_depth=4, v_heads=4, vocab=2048
    ),
}


def _corpus(seed: int) -> list[str]:
    import random

    rng = random.Random(seed)
    lines = [" ".join(rng.choice(_CORPUS_WORDS) for _ in range(12)) for _ in range(400)]
    for _ in range(400):
        x1, y1, x2, y2 = (rng.randint(0, 999) for _ in range(4))
        lines.append(
            f'<think> the {rng.choice(_CORPUS_WORDS)} is here </think><answer>{{"bbox": [{x1}, {y1}, {x2}, {y2}], '
            f'"points_1": [{x1}, {y2}], "points_2": [{x2}, {y1}]}}</answer>'
        )
    lines += [str(i) for i in range(1000)]
    from samr1.modules.prompting import DEFAULT_PROMPT

    lines += [DEFAULT_PROMPT] * 20  # so the default instruction costs few tokens in the tiny model
    return lines


def build_tokenizer(vocab_size: int, seed: int = 0, individual_digits: bool = False):
    """A byte-level BPE tokenizer with Qwen's chat special tokens, trained in about a second."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if individual_digits:  # as Qwen2's tokenizer: a number is one token per digit
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS,
        model_max_length=32768,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_qwen(out_dir: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    """Write a randomly initialised Qwen2.5-VL model directory that `from_pretrained` loads."""
    from transformers import (
        GenerationConfig,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
    )

    if size not in TINY_SIZES:
        raise ValueError(f"unknown tiny size {size!r}; choose one of {sorted(TINY_SIZES)}")
    s = TINY_SIZES[size]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(s["vocab"], seed, s.get("individual_digits", False))
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    head_dim = s["hidden"] // s["heads"]
    half = head_dim // 2
    # mrope sections (temporal, height, width) must sum to half the head dimension.
    mrope = [half - 2 * (half * 3 // 8), half * 3 // 8, half * 3 // 8]
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=s["hidden"],
            intermediate_size=s["inter"],
            num_hidden_layers=s["layers"],
            num_attention_heads=s["heads"],
            num_key_value_heads=s["kv_heads"],
            max_position_embeddings=4096,
            rope_scaling={"type": "mrope", "mrope_section": mrope},
            rope_theta=s.get("rope_theta", 1000000.0),
            tie_word_embeddings=False,
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=s["v_depth"],
            hidden_size=s["v_hidden"],
            intermediate_size=s["v_hidden"] * 2,
            num_heads=s["v_heads"],
            out_hidden_size=s["hidden"],
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=112,
            fullatt_block_indexes=[s["v_depth"] - 1],
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"], do_sample=True, temperature=1.0
    )
    model.save_pretrained(out, safe_serialization=True)
    processor = _processor(tokenizer)
    processor.save_pretrained(out)
    del Qwen2_5_VLProcessor, Qwen2VLImageProcessor  # imported above to fail early on an old transformers
    return out


def _processor(tokenizer):
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor

    kwargs = dict(image_processor=Qwen2VLImageProcessor(), tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)
    try:  # transformers 5 insists on a video processor
        from transformers import Qwen2VLVideoProcessor

        kwargs["video_processor"] = Qwen2VLVideoProcessor()
    except ImportError:
        pass
    return Qwen2_5_VLProcessor(**kwargs)


def build_tiny_sam(path: str | Path, seed: int = 0) -> Path:
    """Write a randomly initialised segment-anything state dict for `model_type="vit_tiny"`."""
    from samr1.sam.architectures import build_sam_module

    torch.manual_seed(seed)
    sam = build_sam_module("vit_tiny")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sam.state_dict(), path)
    return path


def write_tiny_checkpoints(
    out_dir: str | Path,
    size: str = "tiny",
    seed: int = 0,
    warmup_steps: int = 0,
    warmup_image_size: int = 112,
    sam_steps: int = 0,
    warmup_prompt: str = "samr1",
    warmup_lr: float = 3e-3,
    warmup_single_shape_steps: int = 0,
    warmup_batch_size: int = 16,
    warmup_decay_steps: int = 0,
    warmup_other_shape_rate: float = 0.0,
    parallel: bool = True,
) -> dict:
    """Write the tiny policy and the tiny SAM under `out_dir`; returns their paths (the manifest).

    `warmup_steps` > 0 then fits the policy to synthetic-shape answers (see `samr1.tools.warmup`), so that
    it writes the answer format and GRPO's rewards carry signal from the first step (the demo uses this).
    `sam_steps` > 0 trains the tiny SAM on synthetic shapes at `warmup_image_size` pixels for that many steps
    (see `samr1.tools.tiny_sam`; the manifest records its held-out ground-truth-prompt IoU); 0 keeps it random.
    `warmup_prompt` is the instruction the warm-up writes answers to (GRPO's `prompt_template` must match);
    `warmup_lr` its learning rate, `warmup_batch_size` its answers per step, `warmup_single_shape_steps` its
    one-shape-per-image curriculum steps, `warmup_decay_steps` its final steps of linearly falling learning
    rate, `warmup_other_shape_rate` how often an answer targets another shape than the queried one.
    `parallel` trains the SAM in a second process beside the warm-up when both run and torch has two or more
    threads (`tiny_sam.SamTrainingBeside`); False trains it first, in this process.
    """
    out = Path(out_dir)
    qwen = build_tiny_qwen(out / "qwen2_5_vl", size=size, seed=seed)
    sam_path = out / "sam_vit_tiny.pth"
    sam_report = sam_job = None
    if sam_steps > 0:
        from samr1.tools.tiny_sam import SamTrainingBeside, write_trained_sam

        sam_args = dict(path=sam_path, steps=sam_steps, image_size=warmup_image_size, seed=seed)
        if parallel and warmup_steps > 0 and torch.get_num_threads() > 1:
            sam_job = SamTrainingBeside(**sam_args)
        else:
            sam_report = write_trained_sam(**sam_args)
    else:
        build_tiny_sam(sam_path, seed=seed)
    if warmup_steps > 0:
        from samr1.tools.warmup import supervised_warmup

        with sam_job or contextlib.nullcontext():
            supervised_warmup(
                qwen,
                warmup_steps,
                image_size=warmup_image_size,
                lr=warmup_lr,
                batch_size=warmup_batch_size,
                other_shape_rate=warmup_other_shape_rate,
                decay_steps=warmup_decay_steps,
                prompt_template=warmup_prompt,
                seed=seed,
                single_shape_steps=warmup_single_shape_steps,
                on_step=sam_job.on_step if sam_job else None,
            )
            if sam_job is not None:
                sam_report = sam_job.result()
    manifest = {
        "warmup_steps": warmup_steps,
        "warmup_prompt": warmup_prompt,
        "warmup_lr": warmup_lr,
        "warmup_batch_size": warmup_batch_size,
        "warmup_decay_steps": warmup_decay_steps,
        "warmup_other_shape_rate": warmup_other_shape_rate,
        "warmup_single_shape_steps": warmup_single_shape_steps,
        "policy": str(qwen),
        "sam_checkpoint": str(sam_path),
        "sam_model_type": "vit_tiny",
        "size": size,
        "seed": seed,
        "sam_trained": sam_report is not None,
        "sam_trained_beside_warmup": sam_job is not None,
    }
    if sam_report is not None:
        manifest["sam_training"] = dataclasses.asdict(sam_report)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest
