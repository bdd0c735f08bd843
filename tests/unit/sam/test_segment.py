"""The one answer -> SAM prompt -> mask path: SamPredictor's masks under each selection rule, unions, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from segment_anything import SamPredictor

from samr1.answer import parse_answer
from samr1.sam import SamPromptSegmenter, build_sam_module
from samr1.sam.segment import SegmentRule, answer_prompts, segment_answer, segment_answers
from samr1.sample import CoordTransform, SegSample

ANSWER = '<answer>{"bbox": [40, 30, 200, 150], "points_1": [100, 80], "points_2": [150, 120]}</answer>'
LIST = (
    '<answer>[{"bbox_2d": [40, 30, 120, 100], "point_2d": [80, 60]}, '
    '{"bbox_2d": [150, 100, 260, 180], "point_2d": [200, 140]}, {"label": "no prompt"}]</answer>'
)


@pytest.fixture(scope="module")
def sam():
    torch.manual_seed(0)
    return build_sam_module("vit_tiny").eval()


@pytest.fixture(scope="module")
def sample() -> SegSample:
    image = np.random.default_rng(0).integers(0, 256, (97, 143, 3), dtype=np.uint8)
    mask = np.zeros((97, 143), dtype=np.uint8)
    mask[20:70, 30:110] = 1
    # The model saw 280 x 196: answers are mapped back by (143 / 280, 97 / 196).
    transform = CoordTransform(original_size=(143, 97), model_size=(280, 196))
    return SegSample(id="s", query="q", mask=mask, image=Image.fromarray(image), transform=transform)


def _reference(sam, sample, box, points, multimask):
    predictor = SamPredictor(sam)
    predictor.set_image(np.asarray(sample.image))
    masks, scores, _ = predictor.predict(
        point_coords=None if points is None else sample.to_original(points),
        point_labels=None if points is None else np.ones(len(points)),
        box=None if box is None else sample.to_original(box),
        multimask_output=multimask,
    )
    return masks[int(np.argmax(scores))], float(scores.max())


@pytest.mark.parametrize("selection", ["best", "single"])
@pytest.mark.parametrize("prompt", ["box", "points", "box+points"])
def test_mask_equals_sampredictor_under_each_rule(sam, sample, selection, prompt):
    rule = SegmentRule(selection=selection, prompt=prompt)
    box = [40, 30, 200, 150] if "box" in prompt else None
    points = [[100, 80], [150, 120]] if "points" in prompt else None
    expected, expected_score = _reference(sam, sample, box, points, multimask=selection == "best")
    masks, scores = segment_answers(SamPromptSegmenter(sam), [sample], [parse_answer(ANSWER)], rule)
    np.testing.assert_array_equal(masks[0], expected)
    assert scores[0] == pytest.approx(expected_score, abs=1e-6)


def test_best_and_single_differ_and_best_is_the_default(sam, sample):
    segmenter = SamPromptSegmenter(sam)
    answer = parse_answer(ANSWER)
    best = segment_answer(segmenter, sample, answer, SegmentRule())
    single = segment_answer(segmenter, sample, answer, SegmentRule(selection="single"))
    np.testing.assert_array_equal(best, segment_answer(segmenter, sample, answer, SegmentRule("best")))
    assert (best != single).any()  # so the rule matters, and reward and evaluation must share it


def test_list_answer_unites_its_objects_and_skips_objects_without_prompts(sam, sample):
    segmenter = SamPromptSegmenter(sam)
    answer = parse_answer(LIST)
    rule = SegmentRule(multi_object=True)
    assert len(answer_prompts(answer, sample, rule)) == 2
    first, _ = _reference(sam, sample, [40, 30, 120, 100], [[80, 60]], True)
    second, _ = _reference(sam, sample, [150, 100, 260, 180], [[200, 140]], True)
    np.testing.assert_array_equal(segment_answer(segmenter, sample, answer, rule), first | second)
    np.testing.assert_array_equal(segment_answer(segmenter, sample, answer, SegmentRule()), first)


def test_no_prompt_gives_none_and_one_encoding_per_image(sam, sample):
    segmenter = SamPromptSegmenter(sam)
    calls = []
    segmenter.sam.image_encoder.register_forward_hook(lambda *_: calls.append(1))
    answers = [parse_answer(ANSWER), None, parse_answer('<answer>{"mask": 1}</answer>'), parse_answer(LIST)]
    masks, scores = segment_answers(segmenter, [sample] * 4, answers, SegmentRule(multi_object=True))
    assert len(calls) == 1
    assert masks[1] is None and masks[2] is None and np.isnan(scores[1:3]).all()
    assert masks[0].shape == (97, 143) and masks[3].any()
    with pytest.raises(ValueError, match="mask selection"):
        SegmentRule(selection="first")


def test_evaluation_unites_a_visionreasoner_list_and_counts_answers_without_prompts(sam, sample):
    from samr1.geometry import mask_iou
    from samr1.modules.evaluation import Evaluator
    from samr1.sam.segment import AnswerSegmenter

    texts = [LIST, '<think>x</think><answer>{"label": "cup"}</answer>', "no answer at all", ANSWER]
    evaluator = Evaluator([], groups=(), multi_object=True)
    records = evaluator.update(texts, [sample] * 4, AnswerSegmenter(SamPromptSegmenter(sam)))
    first, _ = _reference(sam, sample, [40, 30, 120, 100], [[80, 60]], True)
    second, _ = _reference(sam, sample, [150, 100, 260, 180], [[200, 140]], True)
    np.testing.assert_array_equal(records[0].mask, first | second)
    assert records[0].box == pytest.approx([40 * 143 / 280, 30 * 97 / 196, 120 * 143 / 280, 100 * 97 / 196])
    assert [r.failure for r in records] == [None, "no box or points", "unparseable", None]
    results = evaluator.compute()
    assert results["parse_failure_rate"] == 0.5  # parses but gives SAM nothing: a failure too
    ious = [mask_iou(r.mask, sample.mask) for r in records]
    assert ious[1] == ious[2] == 0.0
    assert results["giou"] == pytest.approx(sum(ious) / 4, abs=1e-12)
