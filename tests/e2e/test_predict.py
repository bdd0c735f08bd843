"""`samr1 predict` on your own image: the shipped config writes a mask, an overlay, the completion and a JSONL line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from samr1.callbacks.overlays import PRED_BOX_COLOR, PRED_MASK_COLOR
from samr1.callbacks.prediction_writer import PredictionWriter, file_stem
from samr1.cli import main
from samr1.datamodules import ImageQueryDataModule
from samr1.modules.evaluation import SampleResult
from samr1.sample import SegSample


def _image(path, size=(64, 48)):
    pixels = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    pixels[10:30, 20:40] = (220, 40, 40)
    Image.fromarray(pixels).save(path)
    return str(path)


def _predict_config(tmp_path, tiny_checkpoints, out) -> str:
    with open("configs/predict.yaml") as f:
        config = yaml.safe_load(f)
    config["model"].update(
        model_path=tiny_checkpoints["policy"],
        sam_checkpoint=tiny_checkpoints["sam_checkpoint"],
        sam_model_type=tiny_checkpoints["sam_model_type"],
        max_new_tokens=8,
    )
    config["trainer"].update(accelerator="cpu", default_root_dir=str(tmp_path))
    (callback,) = config["trainer"]["callbacks"]
    callback["init_args"]["output_dir"] = str(out)
    path = tmp_path / "predict.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _check_outputs(out, sizes: dict[str, tuple[int, int]]):
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == list(sizes)
    for row in rows:
        size = sizes[row["id"]]
        with Image.open(out / row["mask_path"]) as mask:
            assert mask.mode == "L" and mask.size == size
            assert set(np.unique(np.asarray(mask))) <= {0, 255}
        with Image.open(out / row["overlay_path"]) as overlay:
            assert overlay.mode == "RGB" and overlay.size == size
        assert (out / row["completion_path"]).read_text() == row["completion"]
        assert row["mask_path"] == f"{row['id']}_mask.png" and row["completion_path"] == f"{row['id']}.txt"
    return rows


def test_predict_on_a_user_image_writes_mask_overlay_text_and_jsonl(tmp_path, tiny_checkpoints):
    image = _image(tmp_path / "my.png")
    out = tmp_path / "out"
    config = _predict_config(tmp_path, tiny_checkpoints, out)
    main(["predict", "--config", config, "--data.image", image, "--data.query", "the red square"])
    (row,) = _check_outputs(out, {"my": (64, 48)})
    assert row["query"] == "the red square" and row["image"] == image

    # a trained checkpoint, and several images with one query; a second run replaces the JSONL
    main(
        [
            "fit",
            "--config",
            "configs/demo.yaml",
            f"--model.model_path={tiny_checkpoints['policy']}",
            f"--model.sam_checkpoint={tiny_checkpoints['sam_checkpoint']}",
            "--model.max_new_tokens=8",
            "--model.num_iterations=1",
            "--data.batch_size=1",
            "--trainer.max_steps=1",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.logger=false",
            "--trainer.callbacks=[]",
            "--trainer.callbacks+=ModelCheckpoint",
            f"--trainer.callbacks.dirpath={tmp_path / 'ckpt'}",
            "--trainer.callbacks.save_last=true",
        ]
    )
    ckpt = tmp_path / "ckpt" / "last.ckpt"
    other = _image(tmp_path / "other.png", size=(30, 30))
    main(
        [
            "predict",
            "--config",
            config,
            "--data.images",
            json.dumps([image, other]),
            "--data.query",
            "the red square",
            "--ckpt_path",
            str(ckpt),
        ]
    )
    _check_outputs(out, {"my": (64, 48), "other": (30, 30)})


def test_image_query_datamodule_pairs_and_names_missing_images(tmp_path):
    a, b = _image(tmp_path / "a.png"), _image(tmp_path / "b.png")
    dm = ImageQueryDataModule(image=a, query="the cat")
    dm.setup("predict")
    (sample,) = next(iter(dm.predict_dataloader()))
    assert isinstance(sample, SegSample) and sample.mask is None
    assert (sample.id, sample.query, sample.image_path) == ("a", "the cat", a)
    pairs = ImageQueryDataModule(images=[a, b], queries=["x", "y"])
    assert [(s.id, s.query) for s in pairs.samples()] == [("a", "x"), ("b", "y")]
    repeated = ImageQueryDataModule(image=a, queries=["x", "y"])  # one image, two queries: ids stay unique
    assert [(s.id, s.query) for s in repeated.samples()] == [("a_0", "x"), ("a_1", "y")]
    with pytest.raises(FileNotFoundError, match="nowhere.jpg"):
        ImageQueryDataModule(image=str(tmp_path / "nowhere.jpg"), query="x")
    with pytest.raises(ValueError, match="2 images and 3 queries"):
        ImageQueryDataModule(images=[a, b], queries=["x", "y", "z"])
    with pytest.raises(ValueError, match="at least one image"):
        ImageQueryDataModule(image=a)


class _FakeSAM:
    """Returns the box (or a 3 x 3 square at the first point) as the mask, like a perfect SAM."""

    def predict(self, image, boxes=None, points=None, point_labels=None, multimask=False):
        mask = np.zeros(image.shape[:2], dtype=bool)
        if boxes is not None:
            x1, y1, x2, y2 = (int(v) for v in boxes[0])
            mask[y1:y2, x1:x2] = True
        return mask[None], np.ones(1, dtype=np.float32)


def test_writer_draws_mask_box_and_runs_sam_when_the_result_has_no_mask(tmp_path):
    sample = SegSample(id="x/1", query="q", image=Image.new("RGB", (40, 30), (100, 100, 100)))
    completion = '<think>a</think><answer>{"bbox": [10, 5, 30, 25]}</answer>'
    result = SampleResult(id="x/1", query="q", completion=completion, box=[10.0, 5.0, 30.0, 25.0])
    writer = PredictionWriter(str(tmp_path))

    row = writer.write_result(result, sample, segmenter=_FakeSAM())
    assert file_stem("x/1") == "x_1" and row["mask_path"] == "x_1_mask.png"
    mask = np.asarray(Image.open(tmp_path / "x_1_mask.png"))
    expected = np.zeros((30, 40), dtype=np.uint8)
    expected[5:25, 10:30] = 255
    assert (mask == expected).all()
    overlay = np.asarray(Image.open(tmp_path / "x_1_overlay.png"))
    assert tuple(overlay[5, 10]) == PRED_BOX_COLOR
    assert tuple(overlay[15, 20]) == tuple(int(np.rint(0.55 * 100 + 0.45 * c)) for c in PRED_MASK_COLOR)
    assert (tmp_path / "x_1.txt").read_text() == completion

    no_sam = writer.write_result(result, sample, segmenter=None)  # no SAM: box only, no mask file
    assert no_sam["mask_path"] is None and no_sam["box"] == [10.0, 5.0, 30.0, 25.0]
    failed = SampleResult(id="y", query="q", completion="?", failure="unparseable")
    assert writer.write_result(failed, sample, segmenter=_FakeSAM())["failure"] == "unparseable"
    assert not np.asarray(Image.open(tmp_path / "y_mask.png")).any()  # no answer: an empty mask


def test_writer_prompts_the_real_tiny_sam_with_original_pixels(tmp_path, tiny_checkpoints):
    from samr1.sam import build_sam

    sam = build_sam(model_type="vit_tiny", checkpoint=tiny_checkpoints["sam_checkpoint"])
    sample = SegSample(id="z", query="q", image_path=_image(tmp_path / "z.png"))
    result = SampleResult(
        id="z", query="q", completion="", box=[20.0, 10.0, 40.0, 30.0], points=[[30.0, 20.0], [25.0, 15.0]]
    )
    row = PredictionWriter(str(tmp_path / "out")).write_result(result, sample, segmenter=sam)
    with Image.open(tmp_path / "out" / row["mask_path"]) as mask:
        assert mask.size == (64, 48) and set(np.unique(np.asarray(mask))) <= {0, 255}
