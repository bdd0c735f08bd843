"""The SAM-R1 training-set builder: seeded draw, aspect-kept size cap, exact geometry, JSONL round trip."""

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


def test_size_cap_keeps_the_aspect_ratio_and_scales_geometry_exactly(refer, tmp_path):
    data_root, image_root, train = refer
    first = prepare_refcocog_subset(data_root, image_root, tmp_path / "a", n=4, seed=0, max_side=12)
    again = prepare_refcocog_subset(data_root, image_root, tmp_path / "b", n=4, seed=0, max_side=12)
    assert first.read_text() == again.read_text()
    lines = [json.loads(line) for line in first.read_text().splitlines()]
    assert sorted(line["id"] for line in lines) == sorted(train)  # n = all four train sentences
    # Image 1 is 20 x 16: capped to 12 x 10 (12 / 20 = 0.6; 16 x 0.6 = 9.6 -> 10), never to a square.
    by_id = {sample.id: sample for sample in JsonlSegDataset(first)}
    for sample_id in ("refcocog-100", "refcocog-103"):  # the two parts (ann 10) and the bar (ann 11)
        sample = by_id[sample_id]
        assert sample.load_image().size == (12, 10)
        assert sample.meta["original_size"] == [20, 16] and sample.meta["scale"] == [0.6, 0.625]
        mask = train[sample_id][2]
        expected = np.asarray(
            Image.fromarray(mask.astype(np.uint8)).resize((12, 10), Image.Resampling.NEAREST)
        )
        np.testing.assert_array_equal(sample.mask, expected)
        full = _full_resolution(tmp_path, data_root, image_root, sample_id)
        assert sample.box == pytest.approx([v * s for v, s in zip(full.box, (0.6, 0.625, 0.6, 0.625))])
        np.testing.assert_allclose(np.array(sample.points), np.array(full.points) * [0.6, 0.625])
    assert by_id["refcocog-100"].box == pytest.approx((0.6, 1.25, 9.6, 7.5))  # tight box (1, 2, 16, 12)


def _full_resolution(tmp_path, data_root, image_root, sample_id):
    path = tmp_path / "full" / "train.jsonl"
    if not path.exists():
        prepare_refcocog_subset(data_root, image_root, tmp_path / "full", n=4, seed=0)
    return next(s for s in JsonlSegDataset(path) if s.id == sample_id)


def test_a_cap_above_the_image_copies_it(refer, tmp_path):
    data_root, image_root, _ = refer
    path = prepare_refcocog_subset(data_root, image_root, tmp_path / "out", n=4, seed=0, max_side=24)
    original = (image_root / "COCO_train2014_000000000001.jpg").read_bytes()
    assert (tmp_path / "out" / "images" / "COCO_train2014_000000000001.jpg").read_bytes() == original
    assert {tuple(s.meta["scale"]) for s in JsonlSegDataset(path)} == {(1.0, 1.0)}


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
    args = ["refcocog-subset", "--data-root", str(data_root), "--image-root", str(image_root)]
    path = main(args + ["--out", str(tmp_path / "cli"), "--n", "2", "--seed", "3", "--max-side", "10"])
    assert len(JsonlSegDataset(path)) == 2 and JsonlSegDataset(path)[0].load_image().size == (10, 8)
    with pytest.raises(SystemExit):
        main(args + ["--out", str(tmp_path / "old"), "--resize", "840"])  # removed: it stretched images
    with pytest.raises(ValueError, match="max_side"):
        prepare_refcocog_subset(data_root, image_root, tmp_path / "out", n=1, max_side=0)
