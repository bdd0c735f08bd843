"""One GRPO optimiser step in samr1 and in TRL's GRPOTrainer, side by side, on the same work.

Same model (the ~12M-parameter "small" Qwen2.5-VL from `samr1 tiny --size small`, float32, sdpa attention,
vision tower frozen in both), same data (synthetic shapes, one prompt per step), G completions of exactly
`--tokens` tokens each (EOS is banned in both, so neither stops early), the same cheap text reward (share of
digit characters: rewards are not what is measured), DAPO/token-level loss with clip 0.2 / 0.3, k3 KL 0.04
(so both run a reference model), group-scaled advantages, AdamW lr 1e-6, weight decay 0.01, grad clip 1.0,
num_iterations (mu) equal, no gradient checkpointing. Each (framework, image size, mu) runs in a fresh
subprocess; the first `--warmup` rollout batches are not timed. Not a test:

    .venv/bin/pip install -e '.[bench]'      # TRL
    .venv/bin/python benchmarks/bench_grpo_step.py                      # 840 and 224 px, mu 1 (+ mu 2 at 840)
    .venv/bin/python benchmarks/bench_grpo_step.py --sizes 224 --steps 2 --mu 1

Phases. samr1: its own `train/time/{generation,reward,logprobs,update}` logs. TRL: generation = `_generate`
(chat template + image processing + `model.generate`), reward = `_calculate_rewards`, logprobs = the no-grad
`_get_per_token_logps_and_entropies` calls (reference, and old policy when mu > 1), update = the rest of the
step (TRL's second image processing, the loss forward, backward and optimiser step).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PHASES = ("generation", "reward", "logprobs", "update")
CONTENDED = 0.25  # cores used by other processes above which a timing is flagged
RESULTS = Path(__file__).parent / "results"


# ---------------------------------------------------------------- shared pieces
def digit_share(texts: list[str]) -> list[float]:
    """The benchmark's reward: share of a completion's characters that are digits."""
    return [sum(c.isdigit() for c in t) / max(len(t), 1) for t in texts]


def make_samples(size: int, n: int):
    from samr1.datamodules.synthetic import make_shapes_sample

    return [make_shapes_sample(i, "train", 0, size, 2, 4) for i in range(n)]


def banned_and_eos(model_dir: str) -> tuple[list[int], list[int]]:
    """samr1's never-sample ids and the EOS ids; the benchmark bans both so every completion has full length."""
    from transformers import AutoConfig, AutoTokenizer

    from samr1.models.qwen2_5_vl.loading import special_token_ids

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    vocab = AutoConfig.from_pretrained(model_dir).text_config.vocab_size
    eos, banned = special_token_ids(tokenizer, vocab)
    return eos, banned


def summarise(walls: list[float], phases: dict[str, list[float]], opt_steps_per_batch: int) -> dict:
    """Seconds per optimiser step and per phase, from the median timed rollout batch (robust to a stray stall)."""
    median = sorted(range(len(walls)), key=lambda i: walls[i])[(len(walls) - 1) // 2]
    return {
        "s_per_step": walls[median] / opt_steps_per_batch,
        "phases": {k: v[median] / opt_steps_per_batch for k, v in phases.items()},
        "batch_walls": walls,
    }


# ---------------------------------------------------------------- samr1
def run_samr1(model_dir: str, size: int, group: int, tokens: int, mu: int, warmup: int, steps: int) -> dict:
    import lightning as L
    import torch
    from torch.utils.data import DataLoader

    from samr1.modules.policy import GRPOModule
    from samr1.rewards.base import Reward

    class DigitShareReward(Reward):
        def score(self, completions, samples):
            return torch.tensor(digit_share(completions))

    class FixedLengthGRPO(GRPOModule):
        """GRPOModule with EOS banned, so every completion runs to max_new_tokens (the same work as TRL's)."""

        def configure_model(self) -> None:
            super().configure_model()
            self.banned_ids = sorted(set(self.banned_ids) | set(self.eos_ids))
            self.eos_ids = []

    import samr1.modules.rollout as rollout_file

    decode = {"s": 0.0, "tokens": 0}  # the decode steps of generation (one token per row each)

    def timed(feed):
        def wrapper(model, state, tokens):
            tic = time.perf_counter()
            out = feed(model, state, tokens)
            decode["s"] += time.perf_counter() - tic
            decode["tokens"] += 1
            return out

        return wrapper

    rollout_file.feed, rollout_file.feed_shared = timed(rollout_file.feed), timed(rollout_file.feed_shared)

    class Timer(L.Callback):
        def __init__(self) -> None:
            self.walls: list[float] = []
            self.phases: dict[str, list[float]] = {k: [] for k in PHASES}
            self.decode: list[float] = []  # s per decoded token (all G rows), per rollout batch

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            decode.update(s=0.0, tokens=0)
            self.tic = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.walls.append(time.perf_counter() - self.tic)
            self.decode.append(decode["s"] / max(decode["tokens"], 1))
            for k in PHASES:
                self.phases[k].append(float(trainer.callback_metrics[f"train/time/{k}"]))

    L.seed_everything(0, verbose=False)
    module = FixedLengthGRPO(
        model_path=model_dir,
        rewards=[DigitShareReward()],
        image_size=(size, size),
        group_size=group,
        max_new_tokens=tokens,
        temperature=1.0,
        top_p=1.0,
        learning_rate=1e-6,
        weight_decay=0.01,
        num_iterations=mu,
        micro_batch_size=group,
        grad_clip=1.0,
        clip_low=0.2,
        clip_high=0.3,
        kl_coef=0.04,
        aggregation="token",
        advantage_scale="group",
        freeze_vision=True,
        seed=0,
    )
    samples = make_samples(size, warmup + steps)
    loader = DataLoader(samples, batch_size=1, shuffle=False, collate_fn=list)
    timer = Timer()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=(warmup + steps) * mu,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[timer],
    )
    trainer.fit(module, train_dataloaders=loader)
    walls, phases = timer.walls[warmup:], {k: v[warmup:] for k, v in timer.phases.items()}
    result = summarise(walls, phases, mu)
    result["prompt_tokens"] = int(module.last_step.prompts.input_ids.shape[1])
    result["decode_s_per_token"] = sorted(timer.decode[warmup:])[(len(timer.decode[warmup:]) - 1) // 2]
    return result


# ---------------------------------------------------------------- TRL
def run_trl(model_dir: str, size: int, group: int, tokens: int, mu: int, warmup: int, steps: int) -> dict:
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from samr1.modules.prompting import DEFAULT_PROMPT

    eos, banned = banned_and_eos(model_dir)
    samples = make_samples(size, warmup + steps)
    dataset = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": DEFAULT_PROMPT.format(query=s.query)}],
                "image": s.load_image(),
            }
            for s in samples
        ]
    )

    def reward(completions, **kwargs) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        texts = [t if isinstance(t, str) else "".join(p.get("text", "") for p in t) for t in texts]
        return digit_share(texts)

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.walls: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.tic = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.walls.append(time.perf_counter() - self.tic)

    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="sdpa"
    )
    model.model.visual.requires_grad_(False)  # as samr1's freeze_vision=True
    processor = AutoProcessor.from_pretrained(model_dir, padding_side="left")
    out_dir = tempfile.mkdtemp(prefix="trl-bench-")
    config = GRPOConfig(
        output_dir=out_dir,
        use_cpu=True,
        bf16=False,
        fp16=False,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        seed=0,
        max_steps=(warmup + steps) * mu,
        per_device_train_batch_size=group,
        gradient_accumulation_steps=1,
        num_generations=group,
        max_completion_length=tokens,
        generation_kwargs={"suppress_tokens": sorted(set(banned) | set(eos))},
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        shuffle_dataset=False,
        gradient_checkpointing=False,
        learning_rate=1e-6,
        weight_decay=0.01,
        lr_scheduler_type="constant",
        max_grad_norm=1.0,
        beta=0.04,
        epsilon=0.2,
        epsilon_high=0.3,
        loss_type="dapo",
        scale_rewards="group",
        num_iterations=mu,
        dataloader_num_workers=0,
    )
    timer = Timer()
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward,
        args=config,
        train_dataset=dataset,
        processing_class=processor,
        callbacks=[timer],
    )
    # Per-phase timing: wrap the trainer's own methods (TRL's profiling only reports to wandb/mlflow/trackio).
    spent = {k: 0.0 for k in PHASES}
    marks: list[dict[str, float]] = []

    def timed(name, fn, only_without_grad=False):
        def wrapper(*args, **kwargs):
            tic = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                if not (only_without_grad and torch.is_grad_enabled()):
                    spent[name] += time.perf_counter() - tic

        return wrapper

    trainer._generate = timed("generation", trainer._generate)
    trainer._calculate_rewards = timed("reward", trainer._calculate_rewards)
    trainer._get_per_token_logps_and_entropies = timed(
        "logprobs", trainer._get_per_token_logps_and_entropies, only_without_grad=True
    )

    class Marks(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            marks.append(dict(spent))

    trainer.add_callback(Marks())
    trainer.train()
    # Group the optimiser steps by rollout batch (mu steps each); drop the warm-up batches.
    walls = [sum(timer.walls[i : i + mu]) for i in range(0, len(timer.walls), mu)][warmup:]
    cum = [{k: 0.0 for k in PHASES}] + marks[mu - 1 :: mu]
    per_batch = [{k: cum[i + 1][k] - cum[i][k] for k in PHASES} for i in range(len(cum) - 1)][warmup:]
    phases = {k: [b[k] for b in per_batch] for k in ("generation", "reward", "logprobs")}
    phases["update"] = [w - sum(b.values()) for w, b in zip(walls, per_batch)]
    result = summarise(walls, phases, mu)
    result["trl_version"] = trl.__version__
    return result


# ---------------------------------------------------------------- driver
def worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    run = run_samr1 if args.worker == "samr1" else run_trl
    tic = time.perf_counter()
    result = run(args.model_dir, args.size, args.group, args.tokens, args.mu_one, args.warmup, args.steps)
    result["total_s"] = time.perf_counter() - tic
    print("RESULT " + json.dumps(result), flush=True)


def busy_cpu_seconds() -> float | None:
    """CPU-seconds the whole machine has spent busy since boot (Linux /proc/stat); None elsewhere."""
    try:
        values = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


def own_children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def others_load(seconds: float = 2.0) -> float:
    """Cores kept busy by other processes over a short idle wait (0 where it cannot be measured)."""
    before = busy_cpu_seconds()
    time.sleep(seconds)
    after = busy_cpu_seconds()
    return 0.0 if before is None or after is None else max(0.0, (after - before) / seconds)


def wait_until_quiet(limit: float, max_wait: float) -> float:
    """Wait (up to `max_wait` s) until other processes use under `limit` cores; returns the last reading."""
    deadline = time.monotonic() + max_wait
    load = others_load()
    while load > limit and time.monotonic() < deadline:
        time.sleep(5)
        load = others_load()
    return load


def spawn(framework: str, args, size: int, mu: int) -> dict:
    """Run one setting in a fresh process; rerun (up to --retries) when other processes shared the CPUs."""
    cmd = [
        sys.executable, __file__, "--worker", framework, "--model-dir", args.model_dir, "--size", str(size),
        "--mu-one", str(mu), "--group", str(args.group), "--tokens", str(args.tokens), "--warmup",
        str(args.warmup), "--steps", str(args.steps), "--threads", str(args.threads),
    ]  # fmt: skip
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", WANDB_MODE="disabled")
    for attempt in range(args.retries + 1):
        wait_until_quiet(args.quiet, args.max_wait)
        busy0, own0, tic = busy_cpu_seconds(), own_children_cpu(), time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - tic
        busy1, own1 = busy_cpu_seconds(), own_children_cpu()
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not lines:
            sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
            raise RuntimeError(f"{framework} at {size} px, mu {mu} failed (exit {proc.returncode})")
        result = json.loads(lines[-1][len("RESULT ") :])
        # CPU the rest of the machine used while this ran, in cores: a shared machine makes timings meaningless
        # (with 2 threads on 2 cores, one busy neighbour can slow OpenMP kernels many times over).
        others = 0.0 if busy0 is None or busy1 is None else max(0.0, (busy1 - busy0 - (own1 - own0)) / wall)
        result["others_cores"] = round(others, 3)
        result["attempts"] = attempt + 1
        if others <= args.quiet:
            break
        print(f"    ({framework}: other processes used {others:.2f} cores meanwhile; ", end="", flush=True)
        print("running again)" if attempt < args.retries else "kept, marked contended)", flush=True)
    return result


def image_tokens(size: int) -> int:
    return (size // 28) ** 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[840, 224], help="image side in pixels")
    parser.add_argument("--mu", type=int, nargs="+", default=[1], help="num_iterations settings to run")
    parser.add_argument("--mu2-at", type=int, nargs="*", default=[840], help="also run mu = 2 at these sizes")
    parser.add_argument("--group", type=int, default=8, help="G: completions per prompt")
    parser.add_argument("--tokens", type=int, default=64, help="completion tokens (exactly; EOS is banned)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rollout batches")
    parser.add_argument("--steps", type=int, default=3, help="timed rollout batches")
    parser.add_argument("--threads", type=int, default=torch_threads_default())
    parser.add_argument(
        "--model-dir", default=None, help="Qwen2.5-VL directory (default: write the small one)"
    )
    parser.add_argument("--only", choices=["samr1", "trl"], default=None)
    parser.add_argument("--quiet", type=float, default=CONTENDED, help="max cores other processes may use")
    parser.add_argument("--retries", type=int, default=2, help="reruns of a setting timed on a busy machine")
    parser.add_argument("--max-wait", type=float, default=300.0, help="s to wait for a quiet machine per run")
    parser.add_argument("--json", default=str(RESULTS / "grpo_step.json"))
    parser.add_argument("--worker", choices=["samr1", "trl"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=840, help=argparse.SUPPRESS)
    parser.add_argument("--mu-one", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    if args.model_dir is None:
        from samr1.tools.tiny import write_tiny_checkpoints

        written = write_tiny_checkpoints(tempfile.mkdtemp(prefix="samr1-bench-"), size="small")
        args.model_dir = written["policy"]
    frameworks = ["samr1", "trl"] if args.only is None else [args.only]
    if "trl" in frameworks and importlib.util.find_spec("trl") is None:
        raise SystemExit("TRL is not installed: `pip install -e '.[bench]'` (or run with --only samr1)")
    settings = [(s, m) for s in args.sizes for m in args.mu]
    settings += [(s, 2) for s in args.mu2_at if s in args.sizes and 2 not in args.mu]
    machine = f"{cpu_model()}, {os.cpu_count()} CPUs, torch threads {args.threads}"
    print(
        f"GRPO step, samr1 vs TRL: G={args.group}, 1 prompt/step, {args.tokens} completion tokens, "
        f"{args.warmup} warm-up + {args.steps} timed rollout batches; {machine}",
        flush=True,
    )
    rows = []
    for size, mu in settings:
        row = {"size": size, "image_tokens": image_tokens(size), "mu": mu}
        for fw in frameworks:
            row[fw] = spawn(fw, args, size, mu)
            r = row[fw]
            print(
                f"  {fw:5s} {size} px mu {mu}: {r['s_per_step']:.3f} s/step "
                f"(other processes {r['others_cores']:.2f} cores)",
                flush=True,
            )
        rows.append(row)
    print_table(rows, frameworks)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": machine, "platform": platform.platform(), "group": args.group, "tokens": args.tokens,
            "warmup": args.warmup, "steps": args.steps, "versions": versions()}  # fmt: skip
    Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {args.json}")


def print_table(rows: list[dict], frameworks: list[str]) -> None:
    both = len(frameworks) == 2
    head = f"{'image':>9} {'img tok':>7} {'mu':>3} " + " ".join(f"{fw + ' s/step':>13}" for fw in frameworks)
    print("\n" + head + (f" {'TRL/samr1':>10}" if both else ""))
    for r in rows:
        line = f"{r['size']:>4}x{r['size']:<4} {r['image_tokens']:>7} {r['mu']:>3} "
        line += " ".join(
            f"{r[fw]['s_per_step']:>12.3f}{'*' if contended(r[fw]) else ' '}" for fw in frameworks
        )
        if both:
            line += f" {r['trl']['s_per_step'] / r['samr1']['s_per_step']:>9.2f}x"
        print(line)
    decode = {r["size"]: r["samr1"]["decode_s_per_token"] for r in rows if "samr1" in r and r["mu"] == 1}
    if 840 in decode and 224 in decode:
        print(
            f"\nsamr1 decode per token (G rows): 840 px {decode[840] * 1e3:.1f} ms, 224 px "
            f"{decode[224] * 1e3:.1f} ms: 840/224 = {decode[840] / decode[224]:.2f}x"
        )
    print("\nper optimiser step, by phase (s):")
    print(f"{'image':>9} {'mu':>3} {'framework':>9} " + " ".join(f"{p:>10}" for p in PHASES))
    for r in rows:
        for fw in frameworks:
            ph = r[fw]["phases"]
            print(
                f"{r['size']:>4}x{r['size']:<4} {r['mu']:>3} {fw:>9} "
                + " ".join(f"{ph[p]:>10.3f}" for p in PHASES)
            )


def versions() -> dict[str, str]:
    found = {}
    for name in ("torch", "transformers", "lightning", "trl", "samr1"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def contended(result: dict) -> bool:
    return result.get("others_cores", 0.0) > CONTENDED


def torch_threads_default() -> int:
    return int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1))


if __name__ == "__main__":
    main()
