"""GRPO learns on the real path: prompt -> answer in model pixels -> original pixels -> trained SAM -> mask IoU
-> group advantage -> update raises the SAM mask reward and gIoU of a fixed test set above the warm-up policy's.

The original images are 168 px and the policy sees them at 112 px, so an answer must be mapped back (x 1.5)
before SAM scores it. Once it passes, the bar must be checked against three breakages: answers mapped back with
the wrong scale, the advantage sign flipped, and the image withheld from the policy.

NOT PASSING YET (issue 15): the demo-size policy (0.85M parameters, trained from scratch) localises shapes only
weakly after its warm-up (test gIoU 5-12%). GRPO on the demo's test split (32 samples, tiered mask reward,
learning rate 1e-4) moved gIoU 5.1% -> 12.6% after 40 steps but 5.1% -> 3.1% after 100 steps: no reliable
gain; 3e-4 for 40 steps: 11.6% -> 10.4%; 1e-3 loses the answer format within three steps. Marked slow and
xfail (not strict) so it documents the gap and reports XPASS once the bar is met.
"""

from __future__ import annotations

import lightning as L
import pytest

from samr1.datamodules import SyntheticShapesDataModule
from samr1.modules.policy import GRPOModule
from samr1.rewards import AnswerFormatReward, MaskIoUReward, ThinkFormatReward

# The world of the test: a warm-up short enough to leave room, a tiny SAM trained for fewer steps than the demo's.
WARMUP_STEPS, SAM_STEPS, PROMPT = 400, 300, "Find {query}."
GRPO_STEPS, REWARD_GAIN, GIOU_GAIN = 40, 0.5, 0.08


@pytest.fixture(scope="session")
def shapes_world(tmp_path_factory) -> dict:
    """The demo-size policy warmed up to the answer format and a tiny SAM trained on shapes (once a session)."""
    from samr1.tools.tiny import write_tiny_checkpoints

    return write_tiny_checkpoints(
        tmp_path_factory.mktemp("shapes_world"),
        size="demo",
        seed=0,
        warmup_steps=WARMUP_STEPS,
        sam_steps=SAM_STEPS,
        warmup_prompt=PROMPT,
    )


def _evaluate(module, data, make_trainer) -> dict[str, float]:
    trainer = make_trainer()
    trainer.test(module, datamodule=data, verbose=False)
    return {key: float(value) for key, value in trainer.callback_metrics.items()}


def train_on_shapes(world: dict, make_trainer, steps: int = GRPO_STEPS) -> tuple[dict, dict]:
    """Test metrics of the warm-up policy, then of the policy after `steps` GRPO steps (seeded)."""
    L.seed_everything(0)
    module = GRPOModule(
        model_path=world["policy"],
        rewards=[ThinkFormatReward(), AnswerFormatReward(), MaskIoUReward()],
        prompt_template=PROMPT,
        image_size=(112, 112),
        group_size=8,
        max_new_tokens=64,
        learning_rate=3e-4,
        micro_batch_size=16,
        kl_coef=0.005,
        sam_checkpoint=world["sam_checkpoint"],
        sam_model_type="vit_tiny",
        seed=0,
    )
    data = SyntheticShapesDataModule(
        num_train=512, num_test=16, image_size=168, batch_size=4, eval_batch_size=16, val_split=None
    )
    before = _evaluate(module, data, make_trainer)
    make_trainer(max_steps=steps).fit(module, datamodule=data)
    after = _evaluate(module, data, make_trainer)
    return before, after


@pytest.mark.slow
@pytest.mark.xfail(
    strict=False, reason="issue 15: the tiny policy does not learn to localise within the budget"
)
def test_grpo_with_the_sam_reward_raises_mask_reward_and_giou(shapes_world, cpu_trainer):
    before, after = train_on_shapes(shapes_world, cpu_trainer)
    reward = before["test/reward/mask_iou"], after["test/reward/mask_iou"]
    giou = before["test/giou"], after["test/giou"]
    assert before["test/reward/answer_format"] > 0.9, "the warm-up should have taught the answer format"
    assert reward[1] > reward[0] + REWARD_GAIN, (
        f"mask reward did not rise: {reward[0]:.3f} -> {reward[1]:.3f}"
    )
    assert giou[1] > giou[0] + GIOU_GAIN, f"gIoU did not rise: {giou[0]:.3f} -> {giou[1]:.3f}"
