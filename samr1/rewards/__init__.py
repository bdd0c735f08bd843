"""Reward plugins (configured by `class_path` in YAML) and the answer parser they share."""

from samr1.answer import Answer, parse_answer
from samr1.rewards.base import Reward, RewardContext
from samr1.rewards.box import BoxIoUReward, BoxL1Reward, box_iou, box_l1
from samr1.rewards.format import AnswerFormatReward, ThinkFormatReward
from samr1.rewards.mask import MaskIoUReward, mask_iou, tiered
from samr1.rewards.multi_object import MultiObjectMatchReward
from samr1.rewards.points import PointReward, point_accuracy

__all__ = [
    "Answer",
    "AnswerFormatReward",
    "BoxIoUReward",
    "BoxL1Reward",
    "MaskIoUReward",
    "MultiObjectMatchReward",
    "PointReward",
    "Reward",
    "RewardContext",
    "ThinkFormatReward",
    "box_iou",
    "box_l1",
    "mask_iou",
    "parse_answer",
    "point_accuracy",
    "tiered",
]
