"""GPU check: a few real GRPO steps of a random-weight Qwen2.5-VL at real size on one GPU, with and without FSDP2.

What it runs: samr1's own GRPOModule under a Lightning Trainer with the 7B recipe's model settings
(configs/samr1_qwen2_5_vl_7b.yaml: float32 master weights, bf16 compute, lr 1e-6, mu = 2, micro-batch 4, k3 KL
with the reference model, gradient checkpointing, frozen vision tower), one 840 x 840 synthetic-shapes prompt
x G = 8 completions of exactly 256 tokens per step (EOS banned, so every step does the same work), a cheap text
reward (no SAM: the check is about the policy). Twice: unsharded (autocast bf16) and FSDP2 at world size 1
(samr1.strategies.FSDP2Strategy: MixedPrecisionPolicy bf16 / float32 reduction).

The model is built offline from the released config values written below (no hub access): Qwen2.5-VL-3B by
default (tied embeddings), `--model 7b` optional (a full fine-tune of 7B needs ~141 GB of weights and AdamW
state: more than one H200; use `--lora-rank`). The tokenizer and processor are the tiny ones of `samr1 tiny`
(their special-token ids are written into the config); the embedding keeps the real vocabulary size.

It prints and writes JSON (--out): seconds per phase, generated tokens/s, update tokens/s, update MFU against
the GPU's bf16 dense peak, decode tokens/s against the memory-bandwidth roofline (completions per decode step x
bandwidth / bytes a decode step must read: bf16 weights, each prompt's KV cache once, each completion's own KV),
and peak memory. Budget: under 8 minutes on one H200 for the 3B default.

    python benchmarks/gpu_check.py                  # 3B, both runs, benchmarks/results/gpu_check.json
    python benchmarks/gpu_check.py --model 7b --lora-rank 64
    python benchmarks/gpu_check.py --smoke          # the same code at tiny size on CPU (CI)
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from samr1.datamodules import SyntheticShapesDataModule  # noqa: E402
from samr1.modules.module import GRPOModule  # noqa: E402
from samr1.rewards.base import Reward  # noqa: E402

# Qwen2.5-VL-{3B,7B}-Instruct config.json values (text model; the vision tower is the same 32-block ViT).
VISION = dict(
    depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, fullatt_block_indexes=[7, 15, 23, 31]
)
SIZES = {
    "3b": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
               num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, vision=VISION),
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False, vision=VISION),
    # --smoke: the same code, tiny (samr1 tiny's dimensions).
    "smoke": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=2048, tie_word_embeddings=True,
                  vision=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, fullatt_block_indexes=[1])),
}  # fmt: skip
# bf16 dense tensor-core peak (FLOP/s) and memory bandwidth (bytes/s), by device name.
GPUS = {"H200": (989e12, 4.8e12), "H100": (989e12, 3.35e12), "A100": (312e12, 2.0e12)}


class DigitShare(Reward):
    """Share of digit characters: cheap and varied, so advantages are non-zero and rewards are not timed."""

    def score(self, completions, samples):
        return torch.tensor([sum(c.isdigit() for c in t) / max(len(t), 1) for t in completions])


class FixedLengthGRPO(GRPOModule):
    """GRPOModule with EOS banned: every completion is exactly max_new_tokens long (same work each step)."""

    def configure_model(self) -> None:
        super().configure_model()
        self.banned_ids, self.eos_ids = sorted(set(self.banned_ids) | set(self.eos_ids)), []


def build_model_dir(size: str, out: Path, device: str) -> tuple[Path, dict]:
    """A random-weight Qwen2.5-VL of `size` (bf16 safetensors) with the tiny tokenizer and processor."""
    from transformers import AutoProcessor, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from samr1.tools.tiny import build_tiny_qwen

    tiny = build_tiny_qwen(out / "tiny", size="tiny")
    ids = json.loads((tiny / "config.json").read_text())
    text = dict(SIZES[size])
    vision = text.pop("vision")
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    third = head_dim // 2 * 3 // 8
    rope = {"type": "mrope", "mrope_section": [head_dim // 2 - 2 * third, third, third]}  # [16, 24, 24] real
    tokens = {
        k: ids[k]
        for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
    }
    specials = {k: ids["text_config"][k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    config = Qwen2_5_VLConfig(
        text_config=dict(text, max_position_embeddings=128000, rope_theta=1e6, rms_norm_eps=1e-6,
                         rope_scaling=rope, **specials),
        vision_config=dict(vision, out_hidden_size=text["hidden_size"], patch_size=14, spatial_merge_size=2,
                           temporal_patch_size=2, window_size=112, in_chans=3, hidden_act="silu"),
        tie_word_embeddings=text["tie_word_embeddings"],
        **tokens,
    )  # fmt: skip
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration(config)
    model = model.to(torch.bfloat16)
    path = out / f"qwen2_5_vl_{size}"
    model.save_pretrained(path)
    AutoProcessor.from_pretrained(tiny).save_pretrained(path)
    counts = parameter_counts(model)
    del model
    return path, {**counts, "config": text, "tied": text["tie_word_embeddings"]}


def parameter_counts(model) -> dict:
    decoder = model.model.language_model
    head = 0 if model.lm_head.weight is decoder.embed_tokens.weight else model.lm_head.weight.numel()
    return {
        "params_total": sum(p.numel() for p in model.parameters()),
        "params_vision": sum(p.numel() for p in model.model.visual.parameters()),
        "params_layers": sum(p.numel() for p in decoder.layers.parameters()),
        "params_embedding": decoder.embed_tokens.weight.numel(),
        "params_lm_head": model.lm_head.weight.numel(),  # computed per position whether tied or not
        "params_lm_head_separate": head,
    }


class Timed:
    """Synchronised wall time of calls to `owner.attr` (CUDA work included) until `restore()`."""

    def __init__(self, owner, attr: str) -> None:
        self.seconds, fn = [], getattr(owner, attr)
        self.restore = functools.partial(setattr, owner, attr, fn)

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            _sync()
            tic = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                _sync()
                self.seconds.append(time.perf_counter() - tic)

        setattr(owner, attr, timed)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class StepRecorder(L.Callback):
    def __init__(self) -> None:
        self.steps: list[dict] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        record = pl_module.last_step
        self.steps.append(
            {
                "stats": dict(record.stats),
                "prompt_tokens": int(record.prompts.attention_mask.sum(dim=1).max()),
                "prompts": len(record.prompts),
                "completions": len(record.rollouts),
                "completion_tokens": int(record.rollouts.completion_mask.sum()),
                "new_tokens": int(record.rollouts.completion_ids.shape[1]),
            }
        )


def update_flops(step: dict, counts: dict, cfg: dict, hp) -> float:
    """Model FLOPs of one rollout batch's update (forward + backward = 3 x forward; recomputation not counted)."""
    n, t, lp = step["completions"], step["new_tokens"], step["prompt_tokens"]
    g, m = hp.group_size, hp.micro_batch_size
    # each micro-batch prefills (with gradients) every prompt its completions answer
    prefills = sum((min(s + m, n) - 1) // g - s // g + 1 for s in range(0, n, m))
    tokens = prefills * lp + n * t
    matmul = 2 * counts["params_layers"] * tokens + 2 * counts["params_lm_head"] * n * t
    # attention scores and values: 4 x hidden FLOPs per (query, key) pair per layer
    pairs = prefills * lp * (lp + 1) / 2 + n * (t * lp + t * (t + 1) / 2)
    attention = 4 * cfg["hidden_size"] * cfg["num_hidden_layers"] * pairs
    return 3 * (matmul + attention) * hp.num_iterations


def decode_bytes(step: dict, counts: dict, cfg: dict) -> float:
    """Bytes one decode step must read: the bf16 decoder weights and lm_head, each prompt's KV cache once (its
    G completions share it: shared-prefix attention) and every completion's own KV (mean length so far)."""
    weights = 2 * (counts["params_layers"] + counts["params_lm_head"] + cfg["hidden_size"])
    head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    per_token = 2 * cfg["num_hidden_layers"] * cfg["num_key_value_heads"] * head_dim * 2  # K and V, bf16
    context = step["prompts"] * step["prompt_tokens"] + step["completions"] * step["new_tokens"] / 2
    return weights + per_token * context


def run(model_dir: Path, fsdp: bool, args, info: dict, device: str) -> dict:
    import yaml

    import samr1.modules.engine as engine_file
    import samr1.modules.rollout as rollout_file
    from samr1.strategies import FSDP2Strategy

    recipe = yaml.safe_load((ROOT / "configs" / "samr1_qwen2_5_vl_7b.yaml").read_text())
    keep = ("learning_rate", "weight_decay", "num_iterations", "micro_batch_size", "grad_clip", "clip_low",
            "clip_high", "kl_coef", "aggregation", "advantage_scale", "param_dtype", "compute_dtype",
            "gradient_checkpointing", "freeze_vision", "temperature")  # fmt: skip
    settings = {k: v for k, v in recipe["model"].items() if k in keep}
    settings.update(group_size=args.group_size, max_new_tokens=args.new_tokens, lora_rank=args.lora_rank)
    module = FixedLengthGRPO(
        model_path=str(model_dir),
        rewards=[DigitShare()],
        image_size=(args.image_size, args.image_size),
        **settings,
    )
    steps = args.steps
    data = SyntheticShapesDataModule(
        num_train=steps * args.prompts,
        image_size=args.image_size,
        batch_size=args.prompts,
        val_split=None,
        test_split=None,
    )
    recorder = StepRecorder()
    rollouts, prefills = Timed(engine_file, "generate_rollouts"), Timed(rollout_file, "prefill")
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    trainer = L.Trainer(
        accelerator="gpu" if device == "cuda" else "cpu",
        devices=1,
        strategy=FSDP2Strategy() if fsdp else "auto",
        precision="32-true",
        max_steps=steps * module.hparams.num_iterations,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[recorder],
        default_root_dir=tempfile.mkdtemp(),
    )
    tic = time.perf_counter()
    trainer.fit(module, datamodule=data)
    wall = time.perf_counter() - tic
    rollouts.restore(), prefills.restore()
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    timed = recorder.steps[args.warmup :]  # the first steps compile kernels and fill allocator caches
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    phases = {
        p: mean([s["stats"][f"time/{p}"] for s in timed])
        for p in ("generation", "reward", "logprobs", "update")
    }
    rollout_s = mean(rollouts.seconds[args.warmup :])
    decode_s = rollout_s - mean(prefills.seconds[args.warmup :])
    step = timed[-1]
    generated = mean([s["completion_tokens"] for s in timed])
    flops = update_flops(step, info, info["config"], module.hparams)
    decode_steps = step["new_tokens"] - 1  # the first token comes from the prefill's last state
    roofline = (
        args.bandwidth / decode_bytes(step, info, info["config"]) * step["completions"]
        if args.bandwidth
        else None
    )
    result = {
        "strategy": "FSDP2 (world size 1)" if fsdp else "unsharded (autocast bf16)",
        "steps_timed": len(timed),
        "wall_s_including_load": wall,
        "seconds_per_phase": phases,
        "rollout_s": rollout_s,
        "prefill_s": rollout_s - decode_s,
        "decode_s": decode_s,
        "prompt_tokens": step["prompt_tokens"],
        "generated_tokens_per_step": generated,
        "generated_tokens_per_s": generated / phases["generation"],
        "decode_tokens_per_s": step["completions"] * decode_steps / decode_s,
        "decode_roofline_tokens_per_s": roofline,
        "update_tokens_per_s": generated * module.hparams.num_iterations / phases["update"],
        "update_tflops": flops / phases["update"] / 1e12,
        "update_mfu": flops / phases["update"] / args.peak_flops if args.peak_flops else None,
        "peak_memory_gib": peak,
    }
    if roofline:
        result["decode_fraction_of_roofline"] = result["decode_tokens_per_s"] / roofline
    del trainer, module
    gc.collect()
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["3b", "7b"], default="3b")
    parser.add_argument("--smoke", action="store_true", help="tiny size on CPU, in under 2 minutes")
    parser.add_argument("--runs", choices=["both", "unsharded", "fsdp2"], default="both")
    parser.add_argument(
        "--steps", type=int, default=3, help="rollout batches per run, the first --warmup untimed"
    )
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=840)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--prompts", type=int, default=1)
    parser.add_argument("--lora-rank", type=int, default=0)
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="bf16 dense peak (default: by GPU name)"
    )
    parser.add_argument(
        "--bandwidth-tbs", type=float, default=None, help="memory bandwidth (default: by name)"
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_check.json"))
    args = parser.parse_args(argv)
    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check needs a CUDA GPU; `--smoke` runs the same code at tiny size on CPU")
    if args.smoke:
        args.image_size, args.new_tokens, args.steps = min(args.image_size, 112), min(args.new_tokens, 16), 2
    name = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu"
    peak, bandwidth = next((v for k, v in GPUS.items() if k in name), (None, None))
    args.peak_flops = args.peak_tflops * 1e12 if args.peak_tflops else peak
    args.bandwidth = args.bandwidth_tbs * 1e12 if args.bandwidth_tbs else bandwidth
    size = "smoke" if args.smoke else args.model
    with tempfile.TemporaryDirectory() as tmp:
        tic = time.perf_counter()
        model_dir, info = build_model_dir(size, Path(tmp), device)
        build_s = time.perf_counter() - tic
        if device == "cuda" and args.lora_rank == 0:
            # trainable float32 weights + grads + AdamW (16 B), frozen float32 vision (4 B), bf16 reference (2 B)
            trainable = info["params_total"] - info["params_vision"]
            need = 16 * trainable + 4 * info["params_vision"] + 2 * info["params_total"]
            have = torch.cuda.get_device_properties(0).total_memory
            if need > have:
                raise SystemExit(
                    f"{size}: full fine-tuning needs ~{need / 2**30:.0f} GiB for float32 weights, AdamW state and "
                    f"the bf16 reference, more than this GPU's {have / 2**30:.0f} GiB; pass --lora-rank 64"
                )
        runs = {"unsharded": False, "fsdp2": True}
        results = {
            k: run(model_dir, v, args, info, device) for k, v in runs.items() if args.runs in ("both", k)
        }
    report = {
        "machine": {"device": name, "torch": torch.__version__, "peak_flops": args.peak_flops, "bandwidth": args.bandwidth},
        "model": {"size": size, **{k: v for k, v in info.items() if k != "config"}, "config": info["config"]},
        "workload": {"image_size": args.image_size, "group_size": args.group_size, "new_tokens": args.new_tokens,
                     "prompts_per_step": args.prompts, "lora_rank": args.lora_rank, "build_s": build_s},
        "runs": results,
    }  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    for key, r in results.items():
        print(
            f"{key:10s} gen {r['seconds_per_phase']['generation']:.2f}s ({r['generated_tokens_per_s']:.0f} tok/s, "
            f"decode {r['decode_tokens_per_s']:.0f} tok/s) logprobs {r['seconds_per_phase']['logprobs']:.2f}s "
            f"update {r['seconds_per_phase']['update']:.2f}s ({r['update_tokens_per_s']:.0f} tok/s, "
            f"{r['update_tflops']:.2f} TFLOP/s, MFU {r['update_mfu'] if r['update_mfu'] is None else round(r['update_mfu'], 3)}) "
            f"peak {r['peak_memory_gib']} GiB"
        )
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
