"""GRPO learns on the real path: prompt -> answer in model pixels -> original pixels -> trained SAM -> mask IoU
-> group advantage -> update raises the policy's expected SAM mask reward on held-out scenes.

The world is the demo's (the Makefile's `samr1 tiny` warm-up, a tiny SAM trained on shapes), except that the
images are 168 px while the policy sees them at 112 px, so every answer must be mapped back (x 1.5) before SAM
scores it. "Learned" is measured on 64 held-out test scenes as the mean mask reward of 16 completions each,
sampled as in training with a fixed generator (the quantity GRPO maximises), and scored by a reference that
shares none of samr1's answer-to-mask path: the answer's JSON read here, its coordinates scaled by the two
image sizes here, segment-anything's own `SamPredictor`, the IoU and SAM-R1's tiers counted here. (Scored by
samr1's own reward instead, a broken coordinate transform is learned around: with answers mapped back x 1,
GRPO raised that reward 0.285 -> 0.453, past the bar.) The greedy test gIoU is reported.
Once the unbroken run learns, each of three breakages must stop it: answers mapped back with the wrong scale,
the advantage sign flipped, the image withheld from the policy.

The budget: 150 GRPO steps of 16 prompts at lr 1e-4 (~3 min on 2 cores, after a ~4 min warm-up and SAM
training shared by the session). Smaller budgets do not learn: 80 steps of 4 prompts at lr 3e-4 moved the
expected mask reward 0.832 -> 0.766 and 0.837 -> 0.879 in two runs. The greedy gIoU rises less than the
expected reward (GRPO sharpens the sampling distribution around answers the greedy one mostly already
gave; issue 15; README, demo). The breakage tests are slow; they xfail if the unbroken run does not learn,
so none of them can pass for the wrong reason.
"""

from __future__ import annotations

import json
import re

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from segment_anything import SamPredictor

from samr1.datamodules import SyntheticShapesDataModule
from samr1.modules.policy import GRPOModule
from samr1.rewards import AnswerFormatReward, MaskIoUReward, ThinkFormatReward
from samr1.sam.architectures import load_sam_checkpoint

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
# SAM-R1's tiers, written out here: IoU > 0.8 -> 4, > 0.7 -> 3, > 0.5 -> 2, else 0.
TIERS = ((0.8, 4.0), (0.7, 3.0), (0.5, 2.0))
ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


@pytest.fixture(scope="session")
def shapes_world(tmp_path_factory) -> dict:
    """The demo-size policy after the demo's warm-up and a tiny SAM trained on shapes (once a session)."""
    from samr1.tools.tiny import write_tiny_checkpoints

    out = tmp_path_factory.mktemp("shapes_world")
    return write_tiny_checkpoints(
        out, size="demo", seed=0, sam_steps=SAM_STEPS, warmup_prompt=PROMPT, **WARMUP
    )


def reference_mask_reward(predictor: SamPredictor, text: str, mask: np.ndarray, scale: tuple) -> float:
    """SAM-R1's tiered mask reward of one completion without samr1's answer-to-mask path: the answer's box and
    two points read here, multiplied by `scale` (original / model pixels), segment-anything's `SamPredictor`
    (its image already set; three masks, the highest predicted IoU kept, as the field evaluates) and the IoU
    with `mask` counted here. A box's corners are put in order; an answer without a readable box and both
    points scores 0."""
    found = ANSWER.search(text)
    try:
        answer = json.loads(found.group(1))
        box = np.asarray(answer["bbox"], dtype=np.float64).reshape(4)
        points = np.asarray([answer["points_1"], answer["points_2"]], dtype=np.float64).reshape(2, 2)
    except (AttributeError, KeyError, TypeError, ValueError):
        return 0.0
    sx, sy = scale
    corners = np.concatenate([np.minimum(box[:2], box[2:]), np.maximum(box[:2], box[2:])])  # samr1's rule too
    masks, scores, _ = predictor.predict(
        point_coords=points * [sx, sy],
        point_labels=np.ones(2, dtype=np.int64),
        box=corners * [sx, sy, sx, sy],
        multimask_output=True,
    )
    best = masks[int(np.argmax(scores))]
    target = mask.astype(bool)
    iou = (best & target).sum() / max(int((best | target).sum()), 1)
    return next((value for threshold, value in TIERS if iou > threshold), 0.0)


def expected_mask_reward(module: GRPOModule, data: SyntheticShapesDataModule, predictor: SamPredictor):
    """Mean mask reward of `EVAL_SAMPLES` completions per held-out scene, sampled as in training (seeded):
    (by samr1's `MaskIoUReward`, by `reference_mask_reward`)."""
    scenes = data.dataset("test")
    samples = [scenes[i] for i in range(EVAL_SCENES)]
    (mask_reward,) = [r for r in module.rewards if isinstance(r, MaskIoUReward)]
    hp = module.hparams
    model_width, model_height = hp.image_size
    training_generator, module.generator = module.generator, torch.Generator().manual_seed(1234)
    scores, reference = [], []
    try:
        with torch.no_grad():
            for start in range(0, len(samples), 16):
                prompts = module.prompts(samples[start : start + 16])
                rollouts = module.rollout(prompts, EVAL_SAMPLES, hp.temperature, hp.max_new_tokens)
                answered = [prompts.samples[i] for i in rollouts.prompt_index]
                scores.append(mask_reward(rollouts.texts, answered))
                for scene in samples[start : start + 16]:
                    predictor.set_image(np.asarray(scene.image))
                    scale = (scene.image.width / model_width, scene.image.height / model_height)
                    reference += [
                        reference_mask_reward(predictor, text, scene.mask, scale)
                        for text, answering in zip(rollouts.texts, answered)
                        if answering.id == scene.id
                    ]
    finally:  # the training run's own sampling stream continues untouched
        module.generator = training_generator
    assert len(reference) == len(samples) * EVAL_SAMPLES  # every completion scored once by the reference
    return torch.cat(scores).mean().item(), float(np.mean(reference))


def greedy_giou(module, data, make_trainer) -> float:
    trainer = make_trainer()
    trainer.test(module, datamodule=data, verbose=False)
    return float(trainer.callback_metrics["test/giou"])


def train_on_shapes(world: dict, make_trainer) -> dict[str, tuple[float, float]]:
    """(before, after) `GRPO_STEPS` seeded GRPO steps: the expected mask reward by the reference scorer and
    by samr1's reward, and the greedy test gIoU."""
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
    predictor = SamPredictor(load_sam_checkpoint("vit_tiny", world["sam_checkpoint"]))
    giou = [greedy_giou(module, data, make_trainer)]  # also sets the module and the data up
    before = expected_mask_reward(module, data, predictor)
    make_trainer(max_steps=GRPO_STEPS).fit(module, datamodule=data)
    giou.append(greedy_giou(module, data, make_trainer))
    after = expected_mask_reward(module, data, predictor)
    return {
        "mask_reward": (before[1], after[1]),
        "samr1_mask_reward": (before[0], after[0]),
        "giou": tuple(giou),
    }


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
    # samr1's reward path scores the same completions as the reference does, up to answers it reads more
    # leniently than the reference's strict JSON (rare once the format is learned).
    for reference, samr1 in zip(unbroken_run["mask_reward"], unbroken_run["samr1_mask_reward"]):
        assert samr1 == pytest.approx(reference, abs=0.01), describe(unbroken_run)


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
    print(describe(result))  # shown with -rP
    assert not learned(result), f"learned despite {breakage.__name__[1:]}: {describe(result)}"
