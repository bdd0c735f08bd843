"""The SAM-R1 training-set builder: seeded draw, resized images and masks, tight boxes, points, JSONL round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fixtures_data import write_refer
from PIL import Image

from samr1.datamodules import JsonlSegDataset, SampleError
from samr1.datamodules.prepare import main, prepare_refcocog_subset


@pytest.fixture
def refer(tmp_path):
    expected = write_refer(tmp_path / "refer", tmp_path / "train2014")
    return tmp_path / "refer", tmp_path / "train2014", {e[0]: e for e in expected["train"]}


def test_subset_keeps_masks_and_reads_back(refer, tmp_path):
    data_root, image_root, train = refer
    path = prepare_refcocog_subset(data_root, image_root, tmp_path / "out", n=3, seed=1)
    assert path == tmp_path / "out" / "train.jsonl"
    dataset = JsonlSegDataset(path)
    assert len(dataset) == 3 and len({s.id for s in dataset}) == 3
    for sample in dataset:
        sample_id, sent, mask, _ = train[sample.id]
        assert sample.query == sent
        np.testing.assert_array_equal(sample.mask, mask.astype(np.uint8))
        rows, cols = np.nonzero(mask)
        assert sample.box == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)  # tight, from the mask
        assert len(sample.points) == 2 and all(mask[int(y), int(x)] for x, y in sample.points)
        assert sample.load_image().size == mask.shape[::-1]
    original = (image_root / "COCO_train2014_000000000001.jpg").read_bytes()
    assert (tmp_path / "out" / "images" / "COCO_train2014_000000000001.jpg").read_bytes() == original


def test_resize_scales_images_and_masks_and_the_draw_is_seeded(refer, tmp_path):
    data_root, image_root, train = refer
    first = prepare_refcocog_subset(data_root, image_root, tmp_path / "a", n=4, seed=0, resize=40)
    again = prepare_refcocog_subset(data_root, image_root, tmp_path / "b", n=4, seed=0, resize=40)
    assert first.read_text() == again.read_text()
    lines = [json.loads(line) for line in first.read_text().splitlines()]
    assert sorted(line["id"] for line in lines) == sorted(train)  # n = all four train sentences
    for sample in JsonlSegDataset(first):
        mask = train[sample.id][2]
        expected = np.asarray(
            Image.fromarray(mask.astype(np.uint8)).resize((40, 40), Image.Resampling.NEAREST)
        )
        np.testing.assert_array_equal(sample.mask, expected)
        assert sample.load_image().size == (40, 40)
        assert sample.meta["original_size"] == list(mask.shape[::-1]) and sample.meta["resize"] == 40
        assert sample.box is not None and all(sample.mask[int(y), int(x)] for x, y in sample.points)
    other = prepare_refcocog_subset(data_root, image_root, tmp_path / "c", n=4, seed=5, resize=40)
    assert [json.loads(x)["id"] for x in other.read_text().splitlines()] != [x["id"] for x in lines]


def test_errors_and_command_line(refer, tmp_path):
    data_root, image_root, _ = refer
    with pytest.raises(ValueError, match="only 4 sentences"):
        prepare_refcocog_subset(data_root, image_root, tmp_path / "out", n=5)
    val_image = image_root / "COCO_train2014_000000000002.jpg"  # both val sentences use it
    val_image.write_bytes(val_image.read_bytes()[:-60])  # the header reads, the pixels do not
    with pytest.raises(SampleError, match="refcocog-10[45]"):
        prepare_refcocog_subset(data_root, image_root, tmp_path / "out", n=1, split="val")
    assert not (tmp_path / "out" / "train.jsonl").exists()
    with pytest.raises(ValueError, match="only 0 of 1 samples"):
        prepare_refcocog_subset(data_root, image_root, tmp_path / "out", n=1, split="val", on_error="skip")
    path = main(
        ["refcocog-subset", "--data-root", str(data_root), "--image-root", str(image_root)]
        + ["--out", str(tmp_path / "cli"), "--n", "2", "--seed", "3", "--resize", "32"]
    )
    assert len(JsonlSegDataset(path)) == 2 and JsonlSegDataset(path)[0].load_image().size == (32, 32)
