"""The GRPO LightningModule: each training step is rollout -> rewards -> advantages -> mini-batch updates.

Hooks orchestrate: prompts (`prompting.py`), generation (`rollout.py`), rewards (`samr1.rewards`), the math
(`grpo.py`), the update loop (`update.py`), the reference (`reference.py`) and evaluation (`evaluation.py`).
"""

from __future__ import annotations

import json
import math
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

from samr1.answer import parse_answer
from samr1.dtypes import autocast, precision_warnings, resolve_precision
from samr1.models.qwen2_5_vl.checkpoint import save_pretrained
from samr1.models.qwen2_5_vl.checkpointing import enable_activation_checkpointing
from samr1.models.qwen2_5_vl.loading import check_model_path, load_policy, load_processor, special_token_ids
from samr1.models.qwen2_5_vl.lora import add_lora, is_peft
from samr1.models.qwen2_5_vl.prefix_cache import image_features
from samr1.models.qwen2_5_vl.sharding import check_strategy, shard_policy
from samr1.modules.dynamic_sampling import GroupPool, ScoredRound, restore_reward_details, reward_details
from samr1.modules.engine import RolloutEngine, SamplingSettings, SamR1Engine
from samr1.modules.evaluation import (
    Evaluator,
    SampleResult,
    decoding_settings,
    evaluate_samples,
    summary_table,
)
from samr1.modules.grpo import AdvantageScale, ImportanceLevel, LossAggregation, group_advantages
from samr1.modules.logprobs import completion_logprobs
from samr1.modules.options import apply_optimizer_options, check_module_options, check_stage_options
from samr1.modules.prompting import PromptBatch, PromptBuilder, resolve_prompt
from samr1.modules.reference import AdapterDisabledReference, ReferenceModel
from samr1.modules.rollout import Rollouts
from samr1.modules.schedule import lr_factor
from samr1.modules.step import PhaseTimer, StepRecord, out_of_memory_hint
from samr1.modules.update import UpdateBatch, mini_batch_size, needs_old_logprobs, update_policy
from samr1.rewards.base import Reward, RewardContext
from samr1.rewards.combine import reward_statistics, score_completions
from samr1.sam.segment import AnswerSegmenter, MaskSelection
from samr1.sample import SegSample

__all__ = ["GRPOModule", "out_of_memory_hint"]


class GRPOModule(L.LightningModule):
    """GRPO for reasoning segmentation (SAM-R1 / Seg-Zero recipes) with manual optimisation.

    Args:
        model_path: Hugging Face directory or cached hub id of a Qwen2.5-VL model (safetensors, no remote code).
        rewards: reward plugins (YAML `class_path`), summed with their weights; default: think format + box IoU.
        prompt_template: a preset of `samr1.modules.prompting.PROMPTS` ("samr1", "segzero",
            "visionreasoner": each its model's exact text and query normalisation) or a literal template
            whose `{query}` is replaced by the sample's query (literal braces doubled).
        image_size: (width, height) every image is resized to for the policy (multiples of 28); null: Qwen's
            smart resize within min_pixels / max_pixels. Answers map back to original pixels exactly.
        image_resample: the filter images are resized with for the policy: bicubic, or bilinear (the
            filter of Seg-Zero's and VisionReasoner's evaluation scripts).
        min_pixels: smart resize lower bound on width x height (image_size null only).
        max_pixels: smart resize upper bound on width x height (image_size null only).
        group_size: completions per prompt (G); at least 2.
        max_new_tokens: completion length limit in training (tokens); truncated completions are logged. Also
            the constant of aggregation "fixed".
        temperature: sampling temperature of the rollouts (log-probs use the same temperature).
        top_p: nucleus sampling mass of the rollouts (1.0: the full distribution).
        decode_check_every: the rollout decode reads which completions have finished on the host every this
            many tokens (each read waits for the device; finished rows decode padding in between, cut off).
        decode_compaction: at each of those reads, finished completions leave the decoding batch, so the
            compute follows the live rows (the sampled distribution is the same either way).
        decode_static_cache: decode with fixed-shape caches and a fixed set of rows instead (no compaction),
            so every decode step has the same shapes.
        decode_compile: run that fixed-shape decode step through torch.compile (needs decode_static_cache;
            unsharded runs; the first rollout pays the compilation).
        eval_max_new_tokens: completion length limit of greedy evaluation (default: max_new_tokens).
        eval_repetition_penalty: repetition penalty of greedy evaluation; null follows the checkpoint's
            generation_config.json as Hugging Face `generate` does (Qwen2.5-VL-Instruct: 1.05); 1.0: off.
            Printed with the results.
        learning_rate: AdamW peak learning rate.
        weight_decay: AdamW weight decay of matrices (biases and norm gains get none).
        adam_betas: AdamW (beta1, beta2).
        warmup_steps: optimiser steps of linear learning-rate warm-up.
        lr_schedule: after warm-up: constant, cosine or linear decay to 0 over the run's optimiser steps.
        num_iterations: passes over each rollout batch (mu); with more than one pass, or more than one
            mini-batch, the importance ratio moves and clipping acts.
        mini_batch_size: completions per optimiser step (default: the whole rollout batch).
        micro_batch_size: completions per forward/backward (gradient accumulation inside a mini-batch).
        grad_clip: clip the global gradient norm to this value (null: no clipping; the norm is logged).
        clip_low: PPO clip range below 1 (ratio >= 1 - clip_low).
        clip_high: PPO clip range above 1 (ratio <= 1 + clip_high; DAPO's clip-higher when > clip_low).
        kl_coef: k3 KL coefficient; the reference model is loaded only when it is positive.
        kl_clamp: clamp each token's k3 KL to [-kl_clamp, kl_clamp] (Seg-Zero / verl "low_var_kl": 10);
            null: no clamp.
        aggregation: how token terms become the loss: token (DAPO, SAM-R1: one mean over all tokens),
            sequence (GRPO, Seg-Zero: mean of per-sequence means) or fixed (Dr. GRPO: sum / (N x
            max_new_tokens), a constant).
        importance_level: "token": one importance ratio per token (GRPO); "sequence": GSPO's ratio per
            sequence, exp(mean token log-ratio), clipped per sequence and applied to all its tokens (GSPO
            uses much tighter clip ranges, e.g. clip_low 3e-4, clip_high 4e-4). Acts only when the policy
            moves between sampling and update (num_iterations > 1 or several mini-batches).
        advantage_scale: group (reward minus group mean, over group std), batch (over the batch std) or none
            (Dr. GRPO: centred only).
        dynamic_sampling: DAPO's dynamic sampling: groups whose rewards are all equal are dropped and the
            data stream's next batches are rolled out until a batch (data.batch_size prompts) of informative
            groups is gathered; only then does the policy update, so one update may consume several data
            batches (count the schedule in trainer.max_steps). Checkpoints fall on updates and resume exactly.
        max_resample_rounds: with dynamic_sampling, at most this many extra batches per update; when they run
            out (or the epoch ends) the batch is topped up with flat groups.
        entropy_coef: entropy bonus coefficient (subtracted from the loss; 0: off).
        param_dtype: storage dtype of the trainable policy weights, their gradients and AdamW state (master
            weights). Keep float32: bfloat16 or float16 storage rounds small updates away (at lr 1e-6 one
            step changes ~2% of bf16 weights) and warns at start. With LoRA it is the frozen base's dtype
            (bfloat16 halves its memory; PEFT keeps the adapters in float32).
        compute_dtype: dtype of the policy's matmuls and activations: bfloat16 on GPUs. Under FSDP2 the
            weights are all-gathered in it (MixedPrecisionPolicy, float32 gradient reduction); otherwise
            autocast. The frozen reference model and SAM are stored in it.
        dtype: deprecated alias of compute_dtype (it used to set the storage dtype too).
        attn_implementation: transformers attention kernel of the policy (sdpa, eager, flash_attention_2).
        freeze_vision: keep the vision tower frozen (its features are then computed once per step).
        gradient_checkpointing: recompute activations in the backward pass to save memory (decoder layers keep
            the shared prompt KV cache; vision blocks too when the vision tower trains).
        lora_rank: LoRA adapters of this rank on the language model (0: full fine-tuning); the reference is
            then the policy with adapters disabled.
        lora_alpha: LoRA scaling numerator (the update is scaled by alpha / rank).
        lora_dropout: dropout on the LoRA adapters' input.
        export_dir: at the end of fit, write the policy here as a Hugging Face directory (LoRA merged).
        sam_checkpoint: segment-anything checkpoint (or SAM2 directory) shared by the mask reward and evaluation.
        sam_model_type: segment-anything architecture of sam_checkpoint (vit_h, vit_l, vit_b, vit_tiny).
        sam_backend: segment_anything (official .pth checkpoints) or sam2 (a transformers Sam2Model directory).
        sam_cache_size: SAM image embeddings kept in an LRU cache across steps (0: off).
        mask_selection: which of SAM's masks every mask reward, evaluation and prediction keeps: best (the
            highest predicted IoU of SAM's multimask output, as the field's evaluation does) or single (SAM's
            single-mask output).
        predictions_path: test: write one JSON line per sample (answer, parsed box/points, IoU, failure) here,
            and the metrics next to it as <name>.metrics.json.
        eval_groups: report groups for gIoU/cIoU (a sample's meta["group"], or ReasonSeg's short/long).
        eval_multi_object: evaluation unites SAM's masks for every object of a list answer.
        seed: seed of the rollout sampling generator (offset by the process rank).
    """

    def __init__(
        self,
        model_path: str = ".tiny/qwen2_5_vl",
        rewards: list[Reward] | None = None,
        prompt_template: str = "samr1",
        image_size: tuple[int, int] | None = (840, 840),
        image_resample: Literal["bicubic", "bilinear"] = "bicubic",
        min_pixels: int = 56 * 56,
        max_pixels: int = 28 * 28 * 1280,
        group_size: int = 8,
        max_new_tokens: int = 256,
        temperature: float = 1.0,
        top_p: float = 1.0,
        decode_check_every: int = 8,
        decode_compaction: bool = True,
        decode_static_cache: bool = False,
        decode_compile: bool = False,
        eval_max_new_tokens: int | None = None,
        eval_repetition_penalty: float | None = None,
        learning_rate: float = 1e-6,
        weight_decay: float = 0.01,
        adam_betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 0,
        lr_schedule: Literal["constant", "cosine", "linear"] = "constant",
        num_iterations: int = 1,
        mini_batch_size: int | None = None,
        micro_batch_size: int = 8,
        grad_clip: float | None = 1.0,
        clip_low: float = 0.2,
        clip_high: float = 0.3,
        kl_coef: float = 0.0,
        kl_clamp: float | None = None,
        aggregation: LossAggregation = "token",
        importance_level: ImportanceLevel = "token",
        advantage_scale: AdvantageScale = "group",
        dynamic_sampling: bool = False,
        max_resample_rounds: int = 4,
        entropy_coef: float = 0.0,
        param_dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        compute_dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        dtype: Literal["float32", "bfloat16", "float16"] | None = None,
        attn_implementation: str = "sdpa",
        freeze_vision: bool = True,
        gradient_checkpointing: bool = False,
        lora_rank: int = 0,
        lora_alpha: int = 32,
        lora_dropout: float = 0.0,
        export_dir: str | None = None,
        sam_checkpoint: str | None = None,
        sam_model_type: str = "vit_h",
        sam_backend: Literal["segment_anything", "sam2"] = "segment_anything",
        sam_cache_size: int = 0,
        mask_selection: MaskSelection = "best",
        predictions_path: str | None = None,
        eval_groups: tuple[str, ...] = ("short", "long"),
        eval_multi_object: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        check_module_options(locals())  # every option's range, by name, before anything loads (options.py)
        AnswerSegmenter(None, mask_selection)  # fails at start on an unknown mask_selection
        resolve_prompt(prompt_template)  # ... and on a template that is neither a preset nor fillable
        check_model_path(model_path)
        if sam_checkpoint is not None:
            from pathlib import Path

            if not Path(sam_checkpoint).exists():
                raise FileNotFoundError(f"sam_checkpoint not found: {sam_checkpoint}")
        param_dtype, compute_dtype = resolve_precision(param_dtype, compute_dtype, dtype)
        self.save_hyperparameters(ignore=["rewards"])
        # The deprecated alias is resolved once; checkpoints store the two explicit settings.
        self.hparams.update(param_dtype=param_dtype, compute_dtype=compute_dtype, dtype=None)
        self.automatic_optimization = False
        self.rewards = list(rewards) if rewards is not None else _default_rewards()
        names = [r.name for r in self.rewards]
        if len(set(names)) != len(names):
            raise ValueError(f"reward names must be unique, got {names}; set `name` on duplicates")
        self.policy = None
        self.processor = None
        self.prompt_builder: PromptBuilder | None = None
        self.segmenter = None
        self.answer_segmenter: AnswerSegmenter | None = None  # the one answer -> mask path (sam/segment.py)
        self.eval_decoding: dict[str, float | str] = {}
        # The reference is kept out of state_dict and out of DDP's wrapping on purpose.
        self._frozen: dict[str, ReferenceModel | AdapterDisabledReference] = {}
        self.evaluator = Evaluator([r.name for r in self.rewards], tuple(eval_groups), eval_multi_object)
        self.generator: torch.Generator | None = None
        # Samples the rollouts (engine.py); set up with the model unless assigned before.
        self.rollout_engine: RolloutEngine | None = None
        self.last_step: StepRecord | None = None  # None after a batch that only added to the group pool
        self.group_pool: GroupPool | None = None
        self._restored_generator_state: torch.Tensor | None = None

    # ---------------------------------------------------------------- set-up
    def configure_model(self) -> None:
        if self.policy is not None:
            return
        hp = self.hparams
        self.policy = load_policy(hp.model_path, hp.param_dtype, hp.attn_implementation)
        self.policy.train()  # from_pretrained returns eval mode; Qwen has no dropout, but hooks expect train
        if hp.freeze_vision:
            self.policy.model.visual.requires_grad_(False)
        if hp.gradient_checkpointing:
            # Not Hugging Face's gradient_checkpointing_enable: its decoder layers drop the shared-prefix cache.
            enable_activation_checkpointing(self.policy)
        if hp.lora_rank > 0:
            self.policy = add_lora(self.policy, hp.lora_rank, hp.lora_alpha, hp.lora_dropout)
        if self.device_mesh is not None:  # ModelParallelStrategy: shard with FSDP2 (see sharding.py)
            # Checkpointing is on already (above) and idempotent; it lives inside each layer's forward, so
            # FSDP2's gather hooks stay outside it.
            shard_policy(self.policy, self.device_mesh, hp.compute_dtype, hp.gradient_checkpointing)
        self.processor = load_processor(hp.model_path)
        self.prompt_builder = PromptBuilder(
            self.processor,
            hp.prompt_template,
            hp.image_size,
            hp.min_pixels,
            hp.max_pixels,
            resample=hp.image_resample,
        )
        vocab = self.policy.get_output_embeddings().weight.shape[0]
        self.eos_ids, self.banned_ids = special_token_ids(self.processor.tokenizer, vocab)
        if self.rollout_engine is None:  # another RolloutEngine may be assigned before fitting
            self.rollout_engine = SamR1Engine(
                self.processor.tokenizer,
                hp.decode_check_every,
                hp.decode_compaction,
                hp.decode_static_cache,
                hp.decode_compile,
            )
        self.eval_decoding = decoding_settings(
            hp.model_path, hp.eval_max_new_tokens or hp.max_new_tokens, hp.eval_repetition_penalty
        )

    def setup(self, stage: str) -> None:
        check_stage_options(self.hparams, stage)
        check_strategy(self.trainer)
        hp = self.hparams
        if stage == "fit":  # half-precision storage is fine for evaluation; it only loses training updates
            precision = self.trainer.precision
            for message in precision_warnings(hp.param_dtype, hp.compute_dtype, precision, hp.lora_rank > 0):
                rank_zero_warn(message)
        self.configure_model()
        if hp.sam_checkpoint is not None and self.segmenter is None:
            from samr1.sam import build_sam

            self.segmenter = build_sam(
                backend=hp.sam_backend,
                model_type=hp.sam_model_type,
                checkpoint=hp.sam_checkpoint,
                device=self.trainer.strategy.root_device if self._trainer is not None else "cpu",
                dtype=hp.compute_dtype,
                cache_size=hp.sam_cache_size,
            )
        if self.segmenter is not None and self.answer_segmenter is None:
            self.answer_segmenter = AnswerSegmenter(self.segmenter, hp.mask_selection)
        context = RewardContext(segmenter=self.segmenter, device=self.device, segment=self.answer_segmenter)
        for reward in self.rewards:
            reward.setup(context)
        if stage == "fit" and hp.kl_coef > 0 and "reference" not in self._frozen:
            if hp.lora_rank > 0:
                self._frozen["reference"] = AdapterDisabledReference(lambda: self.policy)
            else:
                # Frozen, no optimiser state: stored in the compute dtype, sharded like the policy.
                self._frozen["reference"] = ReferenceModel(
                    hp.model_path, hp.compute_dtype, hp.attn_implementation
                )
                if self.device_mesh is not None:
                    shard_policy(self._frozen["reference"].model, self.device_mesh, hp.compute_dtype, False)

    def on_fit_start(self) -> None:
        for module in self._frozen.values():
            module.to(self.device)
        # One seed per process, so sampling is reproducible and differs across ranks.
        self.generator = torch.Generator(device=self.device).manual_seed(self.hparams.seed + self.global_rank)
        if self._restored_generator_state is not None:  # a resumed run continues the same random stream
            self.generator.set_state(self._restored_generator_state.to(self.generator.get_state().device))
            self._restored_generator_state = None
        if self.hparams.dynamic_sampling:
            self.group_pool = GroupPool(
                self.hparams.max_resample_rounds, self.processor.tokenizer.pad_token_id
            )

    def on_fit_end(self) -> None:
        if self.hparams.export_dir and self.trainer.is_global_zero:
            self.export_pretrained(self.hparams.export_dir)

    def export_pretrained(self, out_dir: str) -> str:
        """Write the policy as a plain Hugging Face directory (LoRA merged; the module keeps the merged model)."""
        was_peft = is_peft(self.policy)
        path = save_pretrained(self.policy, self.processor, out_dir)
        if was_peft:  # merge_and_unload replaced the adapters by merged weights: keep using that model
            self.policy = self.policy.get_base_model() if is_peft(self.policy) else self.policy
            self._frozen.pop("reference", None)
        return str(path)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.generator is not None:
            checkpoint["samr1_sampling_rng"] = self.generator.get_state()
        for logger in self.loggers:  # so `fit --ckpt_path` continues the same wandb run (see cli.py)
            if type(logger).__name__ == "WandbLogger" and logger.version:
                checkpoint["samr1_wandb_run_id"] = str(logger.version)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        apply_optimizer_options(checkpoint, self.hparams)  # a resumed fit trains at the configured rate
        self._restored_generator_state = checkpoint.get("samr1_sampling_rng")

    def configure_optimizers(self):
        hp = self.hparams
        params = [p for p in self.policy.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=hp.learning_rate,
            betas=tuple(hp.adam_betas),
        )
        total = self._total_optimizer_steps()
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, hp.warmup_steps, total, hp.lr_schedule)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _total_optimizer_steps(self) -> int:
        """Optimiser steps of the whole run, for decaying schedules: max_steps, else batches x steps per batch."""
        if self.trainer.max_steps and self.trainer.max_steps > 0:
            return self.trainer.max_steps
        hp = self.hparams
        mini_batches = 1
        if hp.mini_batch_size is not None and self.trainer.datamodule is not None:
            n = self.trainer.datamodule.batch_size * hp.group_size
            mini_batches = math.ceil(n / mini_batch_size(n, hp.mini_batch_size))
        return max(1, int(self.trainer.estimated_stepping_batches) * hp.num_iterations * mini_batches)

    # ---------------------------------------------------------------- training
    def prompts(self, samples: list[SegSample]) -> PromptBatch:
        return self.prompt_builder(samples).to(self.device)

    def rollout(
        self,
        batch: PromptBatch,
        group_size: int,
        temperature: float,
        max_new_tokens: int,
        features=None,
        repetition_penalty: float = 1.0,
    ) -> Rollouts:
        sampling = SamplingSettings(
            group_size=group_size,
            max_new_tokens=max_new_tokens,
            eos_token_ids=tuple(self.eos_ids),
            pad_token_id=self.processor.tokenizer.pad_token_id,
            banned_token_ids=tuple(self.banned_ids),
            temperature=temperature,
            top_p=self.hparams.top_p,
            repetition_penalty=repetition_penalty,
        )
        with self.compute_context():
            self.rollout_engine.sync_weights(self.policy)
            return self.rollout_engine.generate(batch, sampling, features=features, generator=self.generator)

    def training_step(self, batch: list[SegSample], batch_idx: int) -> None:
        hp = self.hparams
        # With dynamic sampling one update spans the rounds gathered in the pool: time them all.
        timer = self.group_pool.timer if self.group_pool is not None else PhaseTimer()
        with timer("generation"):
            # 1. prompts; a frozen vision tower encodes each image once for every pass of the step
            prompts = self.prompts(batch)
            features = self.frozen_image_features(prompts)
            # 2. G completions per prompt, all continuing one prefill of the prompt
            with out_of_memory_hint(
                "generation", len(batch), hp.group_size, "max_new_tokens or data.batch_size"
            ):
                rollouts = self.rollout(prompts, hp.group_size, hp.temperature, hp.max_new_tokens, features)
        with timer("reward"):
            # 3. rewards; with dynamic sampling, flat groups are dropped and the next batches fill the batch;
            # then group-relative advantages
            samples = [prompts.samples[i] for i in rollouts.prompt_index.tolist()]
            total, per_reward = score_completions(self.rewards, rollouts.texts, samples)
            sampling_stats: dict[str, float] = {}
            if self.group_pool is not None:
                pooled = self.pool_groups(
                    ScoredRound(prompts, features, rollouts, total, per_reward, {}, None)
                )
                if pooled is None:
                    self.last_step = None
                    return  # the data stream's next batch is the next resample round
                scored, sampling_stats = pooled
                prompts, features, rollouts = scored.prompts, scored.features, scored.rollouts
                total, per_reward = scored.total, scored.per_reward
            advantages = group_advantages(total, hp.group_size, hp.advantage_scale).to(self.device)
        with timer("logprobs"):
            # 4. log-probs of the sampling policy (when it will move) and of the reference (KL)
            old_logprobs, ref_logprobs = self.sampling_logprobs(prompts, rollouts, features)
        with timer("update"):
            # 5. num_iterations x mini-batches of clipped policy-gradient steps
            with out_of_memory_hint(
                "update", len(batch), hp.group_size, "micro_batch_size, or set gradient_checkpointing"
            ):
                update_batch = UpdateBatch(
                    prompts, rollouts, advantages, old_logprobs, ref_logprobs, features
                )
                with self.compute_context():
                    update_stats = update_policy(self, update_batch)
        # 6. log, and keep a typed record of the step for callbacks
        stats = self.step_statistics(rollouts, total, per_reward, advantages, update_stats, timer.seconds)
        stats.update(sampling_stats)
        self._log_train(stats)
        self.last_step = StepRecord(
            step=self.global_step,
            prompts=prompts,
            rollouts=rollouts,
            answers=[parse_answer(text) for text in rollouts.texts],
            total_reward=total,
            rewards=per_reward,
            advantages=advantages,
            masks=next((r.last_masks for r in self.rewards if r.last_masks is not None), None),
            stats=stats,
        )

    def pool_groups(self, scored: ScoredRound) -> tuple[ScoredRound, dict[str, float]] | None:
        """Add a scored round to the dynamic-sampling pool; the pooled batch and its statistics once the pool
        is full on every process (or the rounds or the epoch ran out), else None."""
        scored.details, scored.masks = reward_details(self.rewards, len(scored.rollouts))
        pool = self.group_pool
        pool.add(scored)
        last_batch = (
            self._trainer is not None and self.trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        )
        if pool.rounds_left and not last_batch and not self._on_every_rank(pool.full):
            return None
        batch, stats = pool.take()
        restore_reward_details(self.rewards, batch)
        return batch, stats

    def _on_every_rank(self, flag: bool) -> bool:
        """`flag` held on every process (processes must agree on when to update: the update synchronises)."""
        if self._trainer is None or self.trainer.world_size == 1:
            return flag
        value = torch.tensor(float(flag), device=self.device)
        return bool(self.trainer.strategy.reduce(value, reduce_op="min").item())

    def frozen_image_features(self, prompts: PromptBatch) -> list[torch.Tensor] | None:
        if not self.hparams.freeze_vision:
            return None
        with torch.no_grad(), self.compute_context():
            return image_features(self.policy, prompts)

    def compute_context(self):
        """Autocast to `compute_dtype` around the policy's passes; nothing under FSDP2 (its own mixed precision)."""
        hp = self.hparams
        return autocast(self.device, hp.param_dtype, hp.compute_dtype, sharded=self.device_mesh is not None)

    def sampling_logprobs(self, prompts: PromptBatch, rollouts: Rollouts, features):
        """(old, reference) log-probs [N, T] of the completions; None where they are not needed."""
        with self.compute_context():
            return self._sampling_logprobs(prompts, rollouts, features)

    def _sampling_logprobs(self, prompts: PromptBatch, rollouts: Rollouts, features):
        hp = self.hparams
        old_logprobs = ref_logprobs = None
        if needs_old_logprobs(len(rollouts), hp.num_iterations, hp.mini_batch_size):
            with torch.no_grad():
                old_logprobs, _ = completion_logprobs(
                    self.policy,
                    prompts,
                    rollouts.completion_ids,
                    rollouts.prompt_index,
                    temperature=self.logprob_temperature(),
                    features=features,
                )
        if "reference" in self._frozen:
            # A frozen vision tower is the initial one: the reference reuses the policy's image features.
            ref_logprobs = self._frozen["reference"].logprobs(
                prompts, rollouts.completion_ids, rollouts.prompt_index, self.logprob_temperature(), features
            )
        return old_logprobs, ref_logprobs

    def step_statistics(
        self, rollouts, total, per_reward, advantages, update_stats, seconds
    ) -> dict[str, float]:
        hp = self.hparams
        gen_tokens = rollouts.completion_mask.sum().item()
        stats = reward_statistics(total, per_reward, hp.group_size)
        stats.update(update_stats)
        stats.update(
            {
                "advantage/mean": advantages.mean().item(),
                "advantage/std": advantages.std().item(),
                "advantage/abs_max": advantages.abs().max().item(),
                "completion/length": rollouts.lengths.float().mean().item(),
                "completion/truncated_frac": rollouts.truncated.float().mean().item(),
                "throughput/generation_tokens_per_s": gen_tokens / max(seconds["generation"], 1e-9),
                "throughput/update_tokens_per_s": gen_tokens
                * hp.num_iterations
                / max(seconds["update"], 1e-9),
                **{f"time/{k}": v for k, v in seconds.items()},
            }
        )
        for reward in self.rewards:
            for key, value in reward.details.items():
                # NaN marks a completion with nothing to measure (e.g. no box): leave it out of the mean.
                stats[f"reward/{reward.name}_{key}"] = value.float().nanmean().item()
        return stats

    def _log_train(self, stats: dict[str, float]) -> None:
        bar = {"reward/mean", "kl", "reward/mask_iou_iou"}
        for key, value in stats.items():
            self.log(f"train/{key}", value, on_step=True, prog_bar=key in bar, batch_size=1)
        # Loggers (CSV, wandb) put rows at optimiser steps, as the terminal does, not at rollout batches.
        position = {"step": float(self.global_step), "epoch": float(self.current_epoch)}
        self.log_dict(position, on_step=True, batch_size=1)

    def logprob_temperature(self) -> float:
        return self.hparams.temperature if self.hparams.temperature > 0 else 1.0

    # ---------------------------------------------------------------- evaluation
    def _greedy(self, batch: list[SegSample]) -> tuple[PromptBatch, Rollouts]:
        prompts = self.prompts(batch)
        decoding = self.eval_decoding
        # Greedy decoding: one completion per prompt (group_size 1, temperature 0).
        rollouts = self.rollout(
            prompts,
            group_size=1,
            temperature=0.0,
            max_new_tokens=int(decoding["max_new_tokens"]),
            repetition_penalty=float(decoding["repetition_penalty"]),
        )
        return prompts, rollouts

    def validation_step(self, batch: list[SegSample], batch_idx: int) -> None:
        self.evaluator.count_unreadable(batch)  # data.on_error: skip left them out of the batch
        if not batch:
            return
        prompts, rollouts = self._greedy(batch)
        self.evaluator.update(rollouts.texts, prompts.samples, self.answer_segmenter, self.rewards)

    def on_validation_epoch_end(self) -> None:
        self._log_eval("val")

    def test_step(self, batch: list[SegSample], batch_idx: int) -> None:
        self.evaluator.count_unreadable(batch)
        if not batch:
            return
        prompts, rollouts = self._greedy(batch)
        self.evaluator.update(rollouts.texts, prompts.samples, self.answer_segmenter, self.rewards)

    def on_test_epoch_end(self) -> None:
        records = self.evaluator.gather_records()
        results = self._log_eval("test")
        if self.trainer.is_global_zero:
            if self.hparams.predictions_path:
                path = self.evaluator.write_predictions(self.hparams.predictions_path, records)
                metrics_path = path.with_suffix(".metrics.json")
                report = {"samples": len(records), **results, "settings": self.eval_settings()}
                metrics_path.write_text(json.dumps(report, indent=2))
                print(
                    f"wrote {len(records)} per-sample predictions to {path} and the metrics to {metrics_path}"
                )
            print(summary_table(results, len(records), self.eval_settings()))

    def predict_step(self, batch: list[SegSample], batch_idx: int) -> list[SampleResult]:
        if not batch:  # every image of the batch was unreadable (data.on_error: skip; logged by the data)
            return []
        prompts, rollouts = self._greedy(batch)
        return evaluate_samples(
            rollouts.texts, prompts.samples, self.answer_segmenter, self.hparams.eval_multi_object
        )

    def eval_settings(self) -> dict[str, float | str | bool]:
        """How the evaluated numbers were produced: decoding, prompt, mask selection (printed and saved)."""
        hp = self.hparams
        prompt = hp.prompt_template if len(hp.prompt_template) <= 40 else "literal template"
        return {
            **self.eval_decoding,
            "prompt": prompt,
            "mask_selection": hp.mask_selection,
            "multi_object": hp.eval_multi_object,
        }

    def _log_eval(self, prefix: str) -> dict[str, float]:
        results = self.evaluator.compute()  # already exact across processes
        for key, value in results.items():
            self.log(f"{prefix}/{key}", value, prog_bar=key in ("giou", "ciou"), rank_zero_only=True)
        self.log_dict(
            {"step": float(self.global_step), "epoch": float(self.current_epoch)}, rank_zero_only=True
        )
        self.evaluator.reset()
        return results


def _default_rewards() -> list[Reward]:
    from samr1.rewards import BoxIoUReward, ThinkFormatReward

    return [ThinkFormatReward(), BoxIoUReward()]
