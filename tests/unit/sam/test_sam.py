"""SAM providers: batched masks equal segment-anything's SamPredictor (and transformers' SAM2 pipeline)
prompt by prompt, pixel for pixel; the image is encoded once per call; the mask reward runs on a real SAM."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from segment_anything import SamPredictor

from samr1.rewards import MaskIoUReward, RewardContext, mask_iou, tiered
from samr1.sam import SamPromptSegmenter, build_sam, build_sam_module
from samr1.sam.segment import AnswerSegmenter
from samr1.sample import CoordTransform, SegSample

K = 10


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (97, 143, 3), dtype=np.uint8)  # not square, not 256


@pytest.fixture(scope="module")
def prompts() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "boxes": np.sort(rng.uniform(0, 95, (K, 2, 2)), axis=1).reshape(K, 4),
        "points": rng.uniform(0, 95, (K, 2, 2)),
        "labels": rng.integers(0, 2, (K, 2)),
    }


@pytest.fixture(scope="module")
def random_sam():
    torch.manual_seed(0)
    return build_sam_module("vit_tiny").eval()


def _select(prompts, layout):
    boxes = prompts["boxes"] if "box" in layout else None
    points = prompts["points"] if "points" in layout else None
    labels = prompts["labels"] if "points" in layout else None
    return boxes, points, labels


def _encoder_calls(module: torch.nn.Module) -> list[int]:
    calls: list[int] = []
    module.register_forward_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize("multimask", [False, True])
@pytest.mark.parametrize("layout", ["box", "points", "box+points"])
def test_masks_equal_sampredictor_prompt_by_prompt(random_sam, image, prompts, layout, multimask):
    boxes, points, labels = _select(prompts, layout)
    masks, scores = SamPromptSegmenter(random_sam).predict(image, boxes, points, labels, multimask=multimask)
    assert masks.shape == (K, *image.shape[:2]) and masks.dtype == bool
    assert scores.shape == (K,) and scores.dtype == np.float32

    reference = SamPredictor(random_sam)
    reference.set_image(image)
    for k in range(K):
        ref_masks, ref_scores, _ = reference.predict(
            point_coords=None if points is None else points[k],
            point_labels=None if labels is None else labels[k],
            box=None if boxes is None else boxes[k],
            multimask_output=multimask,
        )
        best = int(np.argmax(ref_scores))  # the single mask when multimask is off
        np.testing.assert_array_equal(masks[k], ref_masks[best])
        # Batched matrix products round differently in the last bit; the masks above are exact.
        assert scores[k] == pytest.approx(ref_scores[best], abs=1e-6)
    assert 0 < masks.mean() < 1  # the comparison is not between two empty masks


def test_image_encoded_once_and_tensor_inputs(random_sam, image, prompts):
    seg = SamPromptSegmenter(random_sam)
    calls = _encoder_calls(seg.sam.image_encoder)
    m_np, s_np = seg.predict(image, prompts["boxes"], prompts["points"], prompts["labels"])
    m_t, s_t = seg.predict(
        torch.from_numpy(image),
        torch.from_numpy(prompts["boxes"]).float(),
        torch.from_numpy(prompts["points"]).float(),
        torch.from_numpy(prompts["labels"]),
    )
    assert len(calls) == 2  # one encoding per call for K = 10 prompts
    assert (m_np == m_t).mean() > 0.999 and np.allclose(
        s_np, s_t, atol=1e-5
    )  # float32 inputs: same up to rounding


def test_embedding_cache_is_bounded_lru(random_sam, image, prompts):
    seg = SamPromptSegmenter(random_sam, cache_size=2)
    calls = _encoder_calls(seg.sam.image_encoder)
    other = image[::-1].copy()
    first, _ = seg.predict(image, prompts["boxes"], key="a")
    again, _ = seg.predict(image, prompts["boxes"], key="a")
    seg.predict(other, prompts["boxes"], key="b")
    seg.predict(other, prompts["boxes"], key="c")  # evicts "a"
    seg.predict(image, prompts["boxes"], key="a")
    assert len(calls) == 4 and seg.cache.hits == 1 and len(seg.cache) == 2
    np.testing.assert_array_equal(first, again)
    seg.predict(image[:50], prompts["boxes"], key="a")  # same key, different image size: re-encoded
    assert len(calls) == 5


def test_prompt_validation(random_sam, image, prompts):
    seg = SamPromptSegmenter(random_sam)
    with pytest.raises(ValueError, match="boxes"):
        seg.predict(image)
    with pytest.raises(ValueError, match=r"\[K, P, 2\]"):
        seg.predict(image, points=prompts["points"][:, 0])
    with pytest.raises(ValueError, match="2 boxes but 10"):
        seg.predict(image, boxes=prompts["boxes"][:2], points=prompts["points"])
    masks, scores = seg.decode(seg.embed(image), boxes=np.zeros((0, 4)))
    assert masks.shape == (0, 97, 143) and scores.shape == (0,)


def test_build_sam_from_checkpoint_and_bfloat16(tiny_checkpoints, image, prompts):
    seg = build_sam(
        model_type=tiny_checkpoints["sam_model_type"], checkpoint=tiny_checkpoints["sam_checkpoint"]
    )
    assert isinstance(seg, SamPromptSegmenter) and not seg.sam.training
    assert all(not p.requires_grad for p in seg.sam.parameters())
    masks, _ = seg.predict(image, prompts["boxes"])
    assert masks.shape == (K, 97, 143)
    half = build_sam(
        model_type="vit_tiny", checkpoint=tiny_checkpoints["sam_checkpoint"], dtype="bfloat16", cache_size=4
    )
    assert half.sam.image_encoder.patch_embed.proj.weight.dtype == torch.bfloat16
    masks16, scores16 = half.predict(image, prompts["boxes"], multimask=True)
    assert masks16.shape == (K, 97, 143) and np.isfinite(scores16).all()
    with pytest.raises(ValueError, match="needs a checkpoint"):
        build_sam(model_type="vit_tiny")
    with pytest.raises(ValueError, match="unknown SAM backend"):
        build_sam(backend="sam3", checkpoint=tiny_checkpoints["sam_checkpoint"])
    with pytest.raises(FileNotFoundError):
        build_sam(model_type="vit_tiny", checkpoint="/nonexistent.pth")


def _group(image: np.ndarray, g: int, id: str) -> list[SegSample]:
    h, w = image.shape[:2]
    mask = np.zeros((h, w), dtype=np.uint8)
    mask[20:70, 30:110] = 1
    mask[:5] = 255
    pil = Image.fromarray(image)
    transform = CoordTransform(original_size=(w, h), model_size=(280, 196))
    return [SegSample(id=id, query="q", mask=mask, image=pil, transform=transform)] * g


def test_mask_reward_on_real_sam_matches_naive_per_completion_scoring(random_sam, image):
    g = 4
    samples = _group(image, g, "a") + _group(image[::-1].copy(), g, "b")
    rng = np.random.default_rng(3)
    completions = []
    for _ in samples:
        x1, y1 = rng.uniform(0, 120, 2)
        box = [
            round(x1, 1),
            round(y1, 1),
            round(x1 + rng.uniform(20, 150), 1),
            round(y1 + rng.uniform(20, 100), 1),
        ]
        completions.append(
            f"<think>t</think><answer>{json.dumps({'bbox': box, 'points_1': [140, 90], 'points_2': [150, 100]})}"
            "</answer>"
        )
    completions[-1] = "<answer>not json</answer>"
    seg = SamPromptSegmenter(random_sam)
    calls = _encoder_calls(seg.sam.image_encoder)
    reward = MaskIoUReward(prompt="box+points")
    reward.setup(RewardContext(segmenter=seg, segment=AnswerSegmenter(seg, "best")))
    values = reward(completions, samples)
    assert len(calls) == 2  # two images, 2 x 4 completions

    naive = SamPredictor(random_sam)  # what peer code does: set_image per completion
    for i, (text, sample) in enumerate(zip(completions[:-1], samples[:-1])):
        obj = json.loads(text.split("<answer>")[1].split("</answer>")[0])
        t = sample.transform
        naive.set_image(np.asarray(sample.image))
        ref_masks, ref_scores, _ = naive.predict(
            point_coords=t.to_original(np.array([obj["points_1"], obj["points_2"]])),
            point_labels=np.ones(2),
            box=t.to_original(np.array(obj["bbox"])),
            multimask_output=True,
        )
        iou = mask_iou(ref_masks[np.argmax(ref_scores)], sample.mask)
        assert reward.details["iou"][i].item() == pytest.approx(iou, abs=1e-6)
        assert values[i].item() == tiered(iou, ((0.8, 4.0), (0.7, 3.0), (0.5, 2.0)))
    assert values[-1].item() == 0.0 and reward.last_masks[-1] is None
    assert reward.details["iou"][:-1].max() > 0  # a real overlap was measured


# --- SAM2 through transformers ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_sam2(tmp_path_factory):
    from samr1.tools.tiny_sam2 import build_tiny_sam2

    return build_tiny_sam2(tmp_path_factory.mktemp("sam2"), seed=0)


@pytest.mark.parametrize("multimask", [False, True])
def test_sam2_backend_matches_transformers_pipeline(tiny_sam2, image, prompts, multimask):
    from transformers import Sam2Model, Sam2Processor

    seg = build_sam(backend="sam2", checkpoint=str(tiny_sam2))
    calls = _encoder_calls(seg.model.vision_encoder)
    model = Sam2Model.from_pretrained(str(tiny_sam2)).eval()
    processor = Sam2Processor.from_pretrained(str(tiny_sam2))
    for layout in ("box", "points", "box+points"):
        boxes, points, labels = _select(prompts, layout)
        masks, scores = seg.predict(image, boxes, points, labels, multimask=multimask)
        assert masks.shape == (K, 97, 143) and masks.dtype == bool and scores.shape == (K,)
        for k in range(0, K, 3):
            kwargs = {}
            if boxes is not None:
                kwargs["input_boxes"] = [[boxes[k].tolist()]]
            if points is not None:
                kwargs["input_points"] = [[points[k].tolist()]]
                kwargs["input_labels"] = [[labels[k].tolist()]]
            inputs = processor(images=image, return_tensors="pt", **kwargs)
            with torch.inference_mode():
                out = model(**inputs, multimask_output=multimask)
            best = int(out.iou_scores[0, 0].argmax())
            ref = processor.post_process_masks(out.pred_masks, inputs["original_sizes"])[0][0, best].numpy()
            np.testing.assert_array_equal(masks[k], ref)
            assert scores[k] == pytest.approx(out.iou_scores[0, 0, best].item(), abs=1e-6)
    assert len(calls) == 3  # one encoding per predict call


def test_sam2_backend_serves_the_mask_reward(tiny_sam2, image):
    seg = build_sam(backend="sam2", checkpoint=str(tiny_sam2), cache_size=8)
    reward = MaskIoUReward(prompt="box", mapping="continuous")
    reward.setup(RewardContext(segmenter=seg, segment=AnswerSegmenter(seg)))
    samples = _group(image, 3, "a")
    completions = ['<answer>{"bbox": [84, 40, 308, 140]}</answer>'] * 3
    first = reward(completions, samples)
    second = reward(completions, samples)
    assert torch.equal(first, second) and ((first >= 0) & (first <= 1)).all()
    assert seg.cache.hits == 1 and seg.cache.misses == 1
