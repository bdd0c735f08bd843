"""GRPO learns on the real path: prompt -> answer in model pixels -> original pixels -> trained SAM -> mask IoU
-> group advantage -> update raises the policy's expected SAM mask reward on held-out scenes.

The world is the demo's (the Makefile's `samr1 tiny` warm-up, a tiny SAM trained on shapes), except that the
images are 168 px while the policy sees them at 112 px, so every answer must be mapped back (x 1.5) before SAM
scores it. "Learned" is measured on 64 held-out test scenes as the mean mask reward of 16 completions each,
sampled as in training with a fixed generator (the quantity GRPO maximises); the greedy test gIoU is reported.
Once the unbroken run learns, each of three breakages must stop it: answers mapped back with the wrong scale,
the advantage sign flipped, the image withheld from the policy.

The budget: 150 GRPO steps of 16 prompts at lr 1e-4 (~3 min on 2 cores, after a ~4 min warm-up and SAM
training shared by the session). Smaller budgets do not learn: 80 steps of 4 prompts at lr 3e-4 moved the
expected mask reward 0.832 -> 0.766 and 0.837 -> 0.879 in two runs. The greedy gIoU does not rise with it
(34% -> 31% at 112 px in one run): GRPO sharpens the sampling distribution and the greedy answer already was
the policy's best (issue 15; README, demo). The breakage tests are slow; they xfail if the unbroken run does
not learn, so none of them can pass for the wrong reason.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from samr1.datamodules import SyntheticShapesDataModule
from samr1.modules.policy import GRPOModule
from samr1.rewards import AnswerFormatReward, MaskIoUReward, ThinkFormatReward

PROMPT = "Find {query}."
# The demo's warm-up (Makefile: DEMO_WARMUP_*), with a tiny SAM trained for fewer steps than the demo's.
WARMUP = dict(
    warmup_steps=2200,
    warmup_single_shape_steps=1500,
    warmup_decay_steps=700,
    warmup_batch_size=8,
    warmup_lr=2e-3,
)
SAM_STEPS = 400
GRPO_STEPS, LEARNING_RATE, PROMPTS_PER_STEP = 150, 1e-4, 16
EVAL_SCENES, EVAL_SAMPLES = 64, 16
# "Learned": the expected mask reward (tiered, 0..4) of held-out scenes rises by at least this much.
REWARD_GAIN = 0.15


@pytest.fixture(scope="session")
def shapes_world(tmp_path_factory) -> dict:
    """The demo-size policy after the demo's warm-up and a tiny SAM trained on shapes (once a session)."""
    from samr1.tools.tiny import write_tiny_checkpoints

    out = tmp_path_factory.mktemp("shapes_world")
    return write_tiny_checkpoints(
        out, size="demo", seed=0, sam_steps=SAM_STEPS, warmup_prompt=PROMPT, **WARMUP
    )


def expected_mask_reward(module: GRPOModule, data: SyntheticShapesDataModule) -> float:
    """Mean mask reward of `EVAL_SAMPLES` completions per held-out scene, sampled as in training (seeded)."""
    scenes = data.dataset("test")
    samples = [scenes[i] for i in range(EVAL_SCENES)]
    (mask_reward,) = [r for r in module.rewards if isinstance(r, MaskIoUReward)]
    hp = module.hparams
    training_generator, module.generator = module.generator, torch.Generator().manual_seed(1234)
    scores = []
    try:
        with torch.no_grad():
            for start in range(0, len(samples), 16):
                prompts = module.prompts(samples[start : start + 16])
                rollouts = module.rollout(prompts, EVAL_SAMPLES, hp.temperature, hp.max_new_tokens)
                answered = [prompts.samples[i] for i in rollouts.prompt_index]
                scores.append(mask_reward(rollouts.texts, answered))
    finally:  # the training run's own sampling stream continues untouched
        module.generator = training_generator
    return torch.cat(scores).mean().item()


def greedy_giou(module, data, make_trainer) -> float:
    trainer = make_trainer()
    trainer.test(module, datamodule=data, verbose=False)
    return float(trainer.callback_metrics["test/giou"])


def train_on_shapes(world: dict, make_trainer) -> dict[str, tuple[float, float]]:
    """(before, after) `GRPO_STEPS` seeded GRPO steps: the expected mask reward and the greedy test gIoU."""
    L.seed_everything(0)
    module = GRPOModule(
        model_path=world["policy"],
        rewards=[ThinkFormatReward(), AnswerFormatReward(), MaskIoUReward()],
        prompt_template=PROMPT,
        image_size=(112, 112),
        group_size=8,
        max_new_tokens=64,
        learning_rate=LEARNING_RATE,
        micro_batch_size=16,
        kl_coef=0.005,
        sam_checkpoint=world["sam_checkpoint"],
        sam_model_type="vit_tiny",
        seed=0,
    )
    # 4,096 training scenes: 150 steps of 16 draw each at most once (GRPO learns revisited scenes by heart).
    data = SyntheticShapesDataModule(
        num_train=4096,
        num_test=EVAL_SCENES,
        image_size=168,
        batch_size=PROMPTS_PER_STEP,
        eval_batch_size=16,
        val_split=None,
    )
    giou = [greedy_giou(module, data, make_trainer)]  # also sets the module and the data up
    reward = [expected_mask_reward(module, data)]
    make_trainer(max_steps=GRPO_STEPS).fit(module, datamodule=data)
    giou.append(greedy_giou(module, data, make_trainer))
    reward.append(expected_mask_reward(module, data))
    return {"mask_reward": tuple(reward), "giou": tuple(giou)}


def learned(result: dict) -> bool:
    before, after = result["mask_reward"]
    return after - before >= REWARD_GAIN


def describe(result: dict) -> str:
    return ", ".join(f"{key} {before:.3f} -> {after:.3f}" for key, (before, after) in result.items())


@pytest.fixture(scope="session")
def unbroken_run(shapes_world, cpu_trainer) -> dict:
    return train_on_shapes(shapes_world, cpu_trainer)


def test_grpo_with_the_sam_reward_raises_the_expected_mask_reward(unbroken_run):
    print(describe(unbroken_run))  # shown with -rP: the margin over REWARD_GAIN
    assert learned(unbroken_run), f"GRPO did not learn: {describe(unbroken_run)}"


def _wrong_scale(monkeypatch):
    # Answers are read as if the model saw the original 168 px image: mapped back x 1 instead of x 1.5.
    from samr1.sample import CoordTransform

    monkeypatch.setattr(CoordTransform, "to_original", lambda self, xy: np.asarray(xy, dtype=np.float64))


def _flipped_advantage(monkeypatch):
    import samr1.modules.module as module

    advantages = module.group_advantages
    monkeypatch.setattr(module, "group_advantages", lambda *args: -advantages(*args))


def _no_image(monkeypatch):
    # The policy sees a grey image of the same size; the rewards and metrics still score the real one.
    from samr1.modules.prompting import PromptBuilder

    shown = PromptBuilder.images_for
    monkeypatch.setattr(
        PromptBuilder,
        "images_for",
        lambda self, sample: [Image.new("RGB", im.size, (128, 128, 128)) for im in shown(self, sample)],
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "breakage", [_wrong_scale, _flipped_advantage, _no_image], ids=lambda f: f.__name__[1:]
)
def test_a_broken_path_does_not_learn(breakage, unbroken_run, shapes_world, cpu_trainer, monkeypatch):
    if not learned(unbroken_run):
        pytest.xfail(f"the unbroken path does not learn yet either: {describe(unbroken_run)}")
    breakage(monkeypatch)
    result = train_on_shapes(shapes_world, cpu_trainer)
    assert not learned(result), f"learned despite {breakage.__name__[1:]}: {describe(result)}"
