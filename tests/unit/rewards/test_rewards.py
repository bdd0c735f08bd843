"""Each reward's value on hand-made cases, including threshold and tier boundaries and malformed answers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from samr1.rewards import (
    AnswerFormatReward,
    BoxIoUReward,
    BoxL1Reward,
    MaskIoUReward,
    PointReward,
    RewardContext,
    ThinkFormatReward,
    box_iou,
    mask_iou,
    tiered,
)
from samr1.sam.segment import AnswerSegmenter
from samr1.sample import CoordTransform, SegSample

MALFORMED = [
    "",
    "<answer>{'bbox': [1, 2, 3]}</answer>",
    "<think>x</think>",
    '<answer>{"bbox": [NaN, 1, 2, 3]}',
]


def answer(**obj) -> str:
    return f"<think>reasoning</think><answer>{json.dumps(obj)}</answer>"


def sample(mask=None, box=None, points=None, transform=None, id="s", size=(20, 20)) -> SegSample:
    w, h = size
    return SegSample(
        id=id,
        query="q",
        mask=mask,
        image=Image.new("RGB", (w, h)),
        box=box,
        points=points,
        transform=transform,
    )


def values(reward, completions, samples) -> list[float]:
    return reward(completions, samples).tolist()


# --- format ------------------------------------------------------------------------------------------------


def test_think_format_is_a_fullmatch():
    r = ThinkFormatReward()
    texts = [
        "<think>a</think><answer>b</answer>",
        "<think>a\nb</think>\n  <answer>\n{}\n</answer>",
        "hello <think>a</think><answer>b</answer>",
        "<think>a</think><answer>b</answer> trailing",
        "<think>a</think>",
        "<answer>b</answer>",
        "<think>a</think><answer>b",
    ]
    assert values(r, texts, [sample()] * len(texts)) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert r.name == "think_format" and r.weight == 1.0


def test_answer_format_strict_and_lenient():
    strict = AnswerFormatReward()
    lenient = AnswerFormatReward(mode="lenient")
    texts = [
        answer(bbox=[1, 2, 3, 4], points_1=[1, 2], points_2=[3, 4]),
        "<answer>{'bbox': [1, 2, 3, 4], 'points_1': [1, 2], 'points_2': [3.5, 4]}</answer>",
        answer(bbox=[1, 2, 3, 4], points_1=[1, 2], points_2=[3, 4], extra=1),
        answer(bbox=[1, 2, 3, 4], points_1=[1, 2]),
        answer(bbox=[1, 2, 3, 4], points_1=[1, 2, 3], points_2=[3, 4]),
        answer(bbox=["1", 2, 3, 4], points_1=[1, 2], points_2=[3, 4]),
        answer(bbox_2d=[1, 2, 3, 4]),
        '<answer>[{"bbox": [1, 2, 3, 4], "points_1": [1, 2], "points_2": [3, 4]}]</answer>',
        answer(label="cat"),
        *MALFORMED,
    ]
    samples = [sample()] * len(texts)
    assert values(strict, texts, samples) == [1, 1, 0, 0, 0, 0, 0, 0, 0] + [0] * len(MALFORMED)
    assert values(lenient, texts, samples) == [1, 1, 1, 1, 1, 1, 1, 1, 0] + [0] * len(MALFORMED)


def test_answer_format_lists_and_custom_keys():
    r = AnswerFormatReward(keys={"bbox_2d": 4, "point_2d": 2}, allow_list=True)
    good = {"bbox_2d": [1, 2, 3, 4], "point_2d": [1, 2]}
    texts = [
        f"<answer>{json.dumps([good, good])}</answer>",
        f"<answer>{json.dumps([good, {'bbox_2d': [1, 2, 3, 4]}])}</answer>",
        "<answer>[]</answer>",
        f"<answer>{json.dumps(good)}</answer>",
    ]
    assert values(r, texts, [sample()] * 4) == [1.0, 0.5, 0.0, 1.0]


# --- boxes -------------------------------------------------------------------------------------------------


def test_box_iou_function():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 5)) == 0.5
    assert box_iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert box_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0


def test_box_iou_reward_maps_to_original_pixels_and_threshold_is_strict():
    # original 100 x 50 shown to the model at 200 x 200: model x = 2 * x, model y = 4 * y
    t = CoordTransform(original_size=(100, 50), model_size=(200, 200))
    s = sample(box=(0, 0, 100, 50), transform=t, size=(100, 50))
    texts = [
        answer(bbox=[0, 0, 200, 200]),  # IoU 1
        answer(bbox=[0, 0, 200, 100]),  # IoU exactly 0.5: not > 0.5
        answer(bbox=[0, 0, 200, 102]),  # IoU 0.51
        answer(bbox=[200, 200, 0, 0]),  # corners swapped: reordered, IoU 1
        *MALFORMED,
    ]
    threshold = BoxIoUReward()
    continuous = BoxIoUReward(mapping="continuous")
    assert values(threshold, texts, [s] * len(texts)) == [1, 0, 1, 1] + [0] * len(MALFORMED)
    assert values(continuous, texts, [s] * len(texts)) == pytest.approx(
        [1, 0.5, 0.51, 1] + [0] * len(MALFORMED)
    )
    assert threshold.details["iou"].tolist() == pytest.approx([1, 0.5, 0.51, 1] + [0] * len(MALFORMED))
    assert values(threshold, [texts[0]], [sample(box=None)]) == [0.0]  # no GT box


def test_box_l1_reward_in_model_space():
    # original 420 x 420 shown at 840 x 840: the GT box doubles; errors are model pixels
    t = CoordTransform(original_size=(420, 420), model_size=(840, 840))
    s = sample(box=(10, 10, 110, 110), transform=t, size=(420, 420))  # model space (20, 20, 220, 220)
    texts = [
        answer(bbox=[20, 20, 220, 220]),  # 0
        answer(bbox=[59, 20, 220, 220]),  # mean error 9.75
        answer(bbox=[60, 20, 220, 220]),  # mean error exactly 10: not < 10
        answer(bbox=[30, 30, 230, 230]),  # 10
        *MALFORMED,
    ]
    r = BoxL1Reward()
    assert values(r, texts, [s] * len(texts)) == [1, 1, 0, 0] + [0] * len(MALFORMED)
    assert r.details["l1"][:4].tolist() == [0.0, 9.75, 10.0, 10.0]
    assert torch.isnan(r.details["l1"][4:]).all()
    cont = BoxL1Reward(mapping="continuous", scale=100.0)
    assert values(cont, texts[:4], [s] * 4) == pytest.approx([1.0, 0.9025, 0.9, 0.9])
    assert values(r, [texts[0]], [sample(box=None)]) == [0.0]


# --- points ------------------------------------------------------------------------------------------------


def test_point_accuracy_reward():
    mask = np.zeros((10, 10), dtype=np.uint8)
    mask[2:5, 2:5] = 1  # x, y in [2, 5)
    mask[6, 6] = 255
    t = CoordTransform(original_size=(10, 10), model_size=(20, 20))
    s = sample(mask=mask, transform=t, size=(10, 10))
    r = PointReward(mode="accuracy")
    texts = [
        answer(points_1=[4, 4], points_2=[9.8, 9.8]),  # original (2, 2) and (4.9, 4.9): both in
        answer(points_1=[4, 4], points_2=[10, 10]),  # (5, 5) is outside the target
        answer(points_1=[13, 13], points_2=[-2, 0]),  # (6.5, 6.5) ignored pixel, (-1, 0) outside the image
        answer(points=[[4, 4], [4, 8], [8, 4], [100, 100]]),
        answer(bbox=[0, 0, 20, 20]),  # no points
        *MALFORMED,
    ]
    assert values(r, texts, [s] * len(texts)) == [1.0, 0.5, 0.0, 0.75, 0.0] + [0] * len(MALFORMED)
    assert values(r, [texts[0]], [sample(mask=None)]) == [0.0]


def test_segzero_point_rule():
    s = sample(points=[(100, 100), (200, 200)], size=(400, 400))
    r = PointReward(mode="segzero")
    texts = [
        answer(bbox=[0, 0, 300, 300], points_1=[200, 200], points_2=[100, 100]),  # swapped: distance 0
        answer(bbox=[0, 0, 300, 300], points_1=[100, 199], points_2=[200, 299]),  # mean 99
        answer(
            bbox=[0, 0, 300, 300], points_1=[100, 200], points_2=[200, 300]
        ),  # mean exactly 100, on border
        answer(bbox=[0, 0, 150, 150], points_1=[100, 100], points_2=[200, 200]),  # a point outside the box
        answer(points_1=[100, 100], points_2=[200, 200]),  # no box
        answer(bbox=[0, 0, 300, 300], points_1=[100, 100]),  # one point for two GT points
        *MALFORMED,
    ]
    assert values(r, texts, [s] * len(texts)) == [1, 1, 0, 0, 0, 0] + [0] * len(MALFORMED)
    assert values(r, [texts[0]], [sample(points=None)]) == [0.0]


def test_segzero_point_rule_uses_model_space():
    t = CoordTransform(original_size=(100, 100), model_size=(840, 840))  # GT (50, 50) -> (420, 420)
    s = sample(points=[(50, 50), (60, 60)], transform=t, size=(100, 100))
    r = PointReward(mode="segzero")
    near = answer(bbox=[0, 0, 840, 840], points_1=[420, 420], points_2=[504, 504])
    far = answer(bbox=[0, 0, 840, 840], points_1=[50, 50], points_2=[60, 60])  # right only in original pixels
    assert values(r, [near, far], [s, s]) == [1.0, 0.0]


# --- mask IoU with a stand-in segmenter (the real SAM is in test_sam.py) -----------------------------------


class BoxFillSegmenter:
    """Masks are the prompt box filled (or the pixel of the first point); counts encodes and decodes."""

    def __init__(self):
        self.embeds: list = []
        self.decodes: list = []

    def embed(self, image, key=None):
        self.embeds.append(key)
        return image.shape[:2]

    def decode(self, embedding, boxes=None, points=None, point_labels=None, multimask=False):
        h, w = embedding
        k = len(boxes) if boxes is not None else len(points)
        self.decodes.append((k, boxes is not None, 0 if points is None else points.shape[1], multimask))
        masks = np.zeros((k, h, w), dtype=bool)
        for i in range(k):
            if boxes is not None:
                x1, y1, x2, y2 = np.round(boxes[i]).astype(int)
                masks[i, y1:y2, x1:x2] = True
            else:
                x, y = points[i, 0].astype(int)
                masks[i, y, x] = True
        return masks, np.arange(k, dtype=np.float32)


class PredictOnlySegmenter(BoxFillSegmenter):
    def __init__(self):
        super().__init__()
        self.embed = None  # hide embed/decode: the reward falls back to predict()

    def predict(self, image, boxes=None, points=None, point_labels=None, multimask=False):
        return BoxFillSegmenter.decode(self, image.shape[:2], boxes, points, point_labels, multimask)


def test_mask_iou_function():
    target = np.zeros((4, 4), dtype=np.uint8)
    target[:2, :2] = 1
    target[3, 3] = 255
    pred = np.zeros((4, 4), dtype=bool)
    assert mask_iou(pred, np.zeros((4, 4), dtype=np.uint8)) == 1.0  # empty vs empty
    assert mask_iou(pred, target) == 0.0
    pred[:2, :2] = True
    pred[3, 3] = True  # on the ignored pixel: counts in neither intersection nor union
    assert mask_iou(pred, target) == 1.0
    pred[2, 2] = True
    assert mask_iou(pred, target) == 0.8


def test_tiered_boundaries_are_strict():
    tiers = ((0.8, 4.0), (0.7, 3.0), (0.5, 2.0))
    assert [tiered(x, tiers) for x in (1.0, 0.81, 0.8, 0.71, 0.7, 0.51, 0.5, 0.0)] == [4, 4, 3, 3, 2, 2, 0, 0]


def _context(segmenter, selection="single") -> RewardContext:
    return RewardContext(segmenter=segmenter, segment=AnswerSegmenter(segmenter, selection))


def _mask_sample(id="a", transform=None):
    mask = np.zeros((20, 20), dtype=np.uint8)
    mask[0:10, 0:10] = 1  # 100 target pixels
    mask[15:, 15:] = 255
    return sample(mask=mask, id=id, transform=transform)


def test_mask_iou_reward_tiers_end_to_end():
    seg = BoxFillSegmenter()
    r = MaskIoUReward(prompt="box")
    r.setup(_context(seg, "single"))
    s = _mask_sample()
    texts = [
        answer(bbox=[0, 0, 10, 10]),  # IoU 1
        answer(bbox=[0, 0, 9, 9]),  # 81 / 100
        answer(bbox=[0, 0, 10, 8]),  # 80 / 100: exactly 0.8 -> 3
        answer(bbox=[0, 0, 10, 7]),  # exactly 0.7 -> 2
        answer(bbox=[0, 0, 10, 6]),  # 0.6 -> 2
        answer(bbox=[0, 0, 10, 5]),  # exactly 0.5 -> 0
        answer(bbox=[0, 0, 10, 10], points_1=[0, 0]),  # points are not used with prompt="box"
        answer(bbox=[10, 10, 20, 20]),  # 0 / (100 + 100 - 25 ignored)
        *MALFORMED,
    ]
    got = values(r, texts, [s] * len(texts))
    assert got == [4, 4, 3, 2, 2, 0, 4, 0] + [0] * len(MALFORMED)
    assert r.details["iou"].tolist()[:8] == pytest.approx([1, 0.81, 0.8, 0.7, 0.6, 0.5, 1, 0])
    assert r.max_value == 4.0 and r.min_value == 0.0
    assert len(seg.embeds) == 1 and seg.decodes == [(8, True, 0, False)]  # one image, one batch of 8
    assert r.last_masks[0].shape == (20, 20) and r.last_masks[-1] is None


def test_mask_iou_reward_mappings_and_transform():
    t = CoordTransform(original_size=(20, 20), model_size=(40, 40))
    s = _mask_sample(transform=t)
    texts = [
        answer(bbox=[0, 0, 20, 16]),
        answer(bbox=[0, 0, 20, 20]),
    ]  # original (0, 0, 10, 8): 0.8; then 1.0
    for mapping, expected in (("continuous", [0.8, 1.0]), ("threshold", [1.0, 1.0]), ("tiered", [3.0, 4.0])):
        r = MaskIoUReward(prompt="box", mapping=mapping, threshold=0.5)
        r.setup(_context(BoxFillSegmenter()))
        assert values(r, texts, [s, s]) == pytest.approx(expected)
    r = MaskIoUReward(prompt="box", mapping="threshold", threshold=0.8)
    r.setup(_context(BoxFillSegmenter()))
    assert values(r, texts, [s, s]) == [0.0, 1.0]


def test_mask_iou_reward_groups_by_image_and_prompt_layout():
    seg = BoxFillSegmenter()
    r = MaskIoUReward(prompt="box+points", multimask=True)  # the old switch, agreeing with the run's rule
    r.setup(_context(seg, "best"))
    a, b = _mask_sample("a"), _mask_sample("b")
    texts = [
        answer(bbox=[0, 0, 10, 10], points_1=[1, 1], points_2=[2, 2]),
        answer(bbox=[0, 0, 10, 10], points_1=[1, 1], points_2=[2, 2]),
        answer(bbox=[0, 0, 10, 10]),  # box only
        answer(points_1=[1, 1]),  # one point only
        answer(bbox=[0, 0, 10, 10], points_1=[1, 1], points_2=[2, 2]),
        "garbage",
    ]
    got = values(r, texts, [a, a, a, b, b, b])
    assert got == [4, 4, 4, 0, 4, 0]
    assert seg.embeds == [("id", "a"), ("id", "b")]
    assert sorted(seg.decodes) == sorted(
        [(2, True, 2, True), (1, True, 0, True), (1, False, 1, True), (1, True, 2, True)]
    )


def test_mask_iou_reward_with_predict_only_segmenter_and_missing_mask():
    r = MaskIoUReward(prompt="box")
    r.setup(_context(PredictOnlySegmenter()))
    texts = [answer(bbox=[0, 0, 10, 10]), answer(bbox=[0, 0, 10, 10])]
    assert values(r, texts, [_mask_sample(), sample(mask=None)]) == [4.0, 0.0]


def test_mask_iou_reward_needs_a_segmenter_and_one_mask_selection():
    r = MaskIoUReward()
    with pytest.raises(ValueError, match="MaskIoUReward needs SAM"):
        r.setup(RewardContext(segmenter=None))
    with pytest.raises(ValueError, match="RewardContext.segment is not set"):
        r.setup(RewardContext(segmenter=BoxFillSegmenter()))
    with pytest.raises(ValueError, match="multimask=False disagrees with model.mask_selection='best'"):
        MaskIoUReward(multimask=False).setup(_context(BoxFillSegmenter(), "best"))
    with pytest.raises(ValueError):
        MaskIoUReward(prompt="mask")


def test_default_names():
    names = [
        r().name for r in (ThinkFormatReward, AnswerFormatReward, BoxIoUReward, BoxL1Reward, PointReward)
    ]
    assert names + [MaskIoUReward().name] == [
        "think_format",
        "answer_format",
        "box_iou",
        "box_l1",
        "point",
        "mask_iou",
    ]
    assert BoxIoUReward(name="iou50", weight=2.0).name == "iou50"


def test_mask_iou_reward_unites_objects_of_a_list_answer_when_asked():
    s = _mask_sample()  # target: the 10 x 10 square at the top left, ignore region as in the tiers test
    two = '<think>x</think><answer>[{"bbox": [0, 0, 10, 5]}, {"bbox": [0, 5, 10, 10]}]</answer>'
    single = MaskIoUReward(prompt="box", mapping="continuous")
    single.setup(_context(BoxFillSegmenter(), "single"))
    united = MaskIoUReward(prompt="box", mapping="continuous", multi_object=True)
    seg = BoxFillSegmenter()
    united.setup(_context(seg, "single"))
    assert values(single, [two], [s]) == pytest.approx([0.5])  # the first object only
    assert values(united, [two], [s]) == pytest.approx([1.0])  # both halves together
    assert len(seg.embeds) == 1 and seg.decodes == [(2, True, 0, False)]  # both objects in one batch


# --- thresholds defined at 840 x 840 are measured there in every resize mode ---------------------------------
def test_pixel_thresholds_are_measured_in_840_space_under_smart_resize():
    # Original 1000 x 500 seen at 500 x 250 (smart resize): 840-space px per model px are 1.68 (x), 3.36 (y).
    t = CoordTransform(original_size=(1000, 500), model_size=(500, 250))
    s = sample(box=(100, 100, 400, 400), points=[(200, 200), (250, 250)], transform=t, size=(1000, 500))
    shifted = answer(bbox=[54, 54, 204, 204], points_1=[100, 130], points_2=[125, 155])  # GT/2 + 4 / + 30
    l1 = BoxL1Reward()
    assert values(l1, [shifted], [s]) == [0.0]
    assert l1.details["l1"].item() == pytest.approx((2 * 4 * 1.68 + 2 * 4 * 3.36) / 4)  # 10.08 px at 840
    model_space = BoxL1Reward(reference_size=None)
    assert values(model_space, [shifted], [s]) == [1.0] and model_space.details["l1"].item() == 4.0
    # Points: 30 model px down = 100.8 px at 840 (>= 100: a miss), 30 px in the model's space (a hit).
    assert values(PointReward(mode="segzero"), [shifted], [s]) == [0.0]
    assert values(PointReward(mode="segzero", reference_size=None), [shifted], [s]) == [1.0]


def test_at_840_the_model_space_is_the_reference_space_as_written():
    t = CoordTransform(original_size=(640, 427), model_size=(840, 840))
    s = sample(box=(64, 42.7, 320, 213.5), transform=t, size=(640, 427))
    gt = t.to_model(s.box)  # (84, 84, 420, 420) up to float rounding
    text = answer(bbox=[float(v) + 9.99 for v in gt])
    r = BoxL1Reward()
    assert values(r, [text], [s]) == [1.0]
    assert r.details["l1"].item() == pytest.approx(9.99, abs=1e-5)
    with pytest.raises(ValueError, match="reference_size"):
        BoxL1Reward(reference_size=(840, 0))
