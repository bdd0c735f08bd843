"""ReasonSegDataset on a small copy of LISA's release: LISA's mask rules, text choice, broken files."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from fixtures_data import rect, write_reasonseg, write_reasonseg_item
from PIL import Image

from samr1.datamodules import ReasonSegDataModule, ReasonSegDataset, SampleError


@pytest.fixture
def reasonseg(tmp_path):
    root = tmp_path / "ReasonSeg"
    return root, write_reasonseg(root)


def test_val_masks_follow_lisa_and_use_the_first_text(reasonseg):
    root, expected = reasonseg
    dataset = ReasonSegDataset(root, "val")
    assert [dataset[i].id for i in range(len(dataset))] == ["a", "b", "c"]
    for index, name in enumerate(["a", "b", "c"]):
        sample = dataset[index]
        np.testing.assert_array_equal(sample.mask, expected["val"][name], err_msg=name)
        assert sample.load_image().size == (24, 20)
    a, b, c = dataset[0], dataset[1], dataset[2]
    assert a.query == "what would keep me dry?" and a.meta["is_sentence"] is True and a.meta["num_texts"] == 2
    assert b.query == "the dog\u2019s toys" and b.meta["is_sentence"] is False  # read from cp1252 bytes
    assert a.box == (2.0, 3.0, 16.0, 13.0) and b.box == (1.0, 1.0, 23.0, 19.0)
    assert c.box is None and c.points is None and not c.mask.any()
    assert all(a.mask[int(y), int(x)] == 1 for x, y in a.points)


def test_train_yields_every_text_and_val_only_the_first(reasonseg):
    root, expected = reasonseg
    train = ReasonSegDataset(root, "train", all_texts=True)
    assert [s.id for s in (train[i] for i in range(len(train)))] == ["t1#0", "t1#1", "t1#2", "t2#0"]
    assert [train[i].query for i in range(len(train))] == ["one", "two", "three", "only"]
    assert len(ReasonSegDataset(root, "train")) == 2
    dm = ReasonSegDataModule(str(root), test_split=None)
    dm.setup("fit")
    assert len(dm.dataset("train")) == 4 and len(dm.dataset("val")) == 3


def test_exif_orientation_is_applied_like_opencv(tmp_path):
    folder = tmp_path / "ReasonSeg" / "val"
    write_reasonseg_item(
        folder,
        "r",
        {"text": ["x"], "is_sentence": False, "shapes": [{"label": "t", "points": rect(1, 1, 2, 5)}]},
    )
    image = Image.new("RGB", (20, 10))  # stored landscape, displayed portrait (orientation 6: rotate 90 cw)
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(folder / "r.jpg", exif=exif)
    sample = ReasonSegDataset(tmp_path / "ReasonSeg", "val")[0]
    assert sample.load_image().size == (10, 20) and sample.mask.shape == (20, 10)
    assert sample.mask.sum() == 10  # any label but flag/ignore is target, as in LISA


def test_missing_folder_and_files_name_the_path(reasonseg):
    root, _ = reasonseg
    with pytest.raises(FileNotFoundError, match=re.escape(str(root / "test"))):
        ReasonSegDataset(root, "test")
    (root / "val" / "b.json").unlink()
    (root / "val" / "c.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(root / "val" / "b.json"))):
        ReasonSegDataset(root, "val")
    dataset = ReasonSegDataset(root, "val", on_error="skip")
    assert len(dataset) == 1 and len(dataset.skipped) == 2
    assert "sample c" in dataset.skipped[1] and str(root / "val" / "c.jpg") in dataset.skipped[1]


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        json.dumps({"text": [], "is_sentence": False, "shapes": []}).encode(),
        json.dumps({"text": ["q"], "shapes": []}).encode(),
        json.dumps(
            {"text": ["q"], "is_sentence": False, "shapes": [{"label": "target", "points": [[1, 2, 3]]}]}
        ).encode(),
    ],
)
def test_broken_annotation_is_reported_with_file_and_id(reasonseg, content):
    root, _ = reasonseg
    path = root / "val" / "a.json"
    path.write_bytes(content)
    with pytest.raises(SampleError, match=re.escape(f"sample a ({path})")):
        ReasonSegDataset(root, "val")
    assert len(ReasonSegDataset(root, "val", on_error="skip")) == 2
