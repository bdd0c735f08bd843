"""JsonlSegDataset: each mask kind, given or derived boxes and points, bad lines named by file and line."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from fixtures_data import compressed_rle, rect, write_image
from PIL import Image

from samr1.datamodules import JsonlSegDataModule, JsonlSegDataset, SampleError


def _write(path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


@pytest.fixture
def jsonl(tmp_path):
    write_image(tmp_path / "images" / "one.jpg", 16, 12)
    rle_mask = np.zeros((12, 16), dtype=bool)
    rle_mask[2:5, 3:9] = True
    png = np.zeros((12, 16), dtype=np.uint8)
    png[1:4, 1:4] = 7  # any non-zero value but 255 is target
    png[6:8, 6:8] = 255
    Image.fromarray(png).save(tmp_path / "mask.png")
    lines = [
        {
            "id": "rle",
            "image": "images/one.jpg",
            "query": "q1",
            "mask_rle": compressed_rle(rle_mask),
            "meta": {"k": 1},
        },
        "",
        {
            "id": "poly",
            "image": "images/one.jpg",
            "query": "q2",
            "polygons": [rect(1, 1, 2, 2), rect(10, 5, 12, 9)],
        },
        {
            "id": "png",
            "image": "images/one.jpg",
            "query": "q3",
            "mask_png": "mask.png",
            "box": [0.5, 0.5, 4.5, 4.5],
            "points": [[2, 2], [3, 3]],
        },
    ]
    poly = np.zeros((12, 16), dtype=np.uint8)
    poly[1:3, 1:3] = 1
    poly[5:10, 10:13] = 1
    expected_png = (png != 0).astype(np.uint8)
    expected_png[png == 255] = 255
    return _write(tmp_path / "train.jsonl", lines), {
        "rle": rle_mask.astype(np.uint8),
        "poly": poly,
        "png": expected_png,
    }


def test_each_mask_kind_reads_exactly(jsonl):
    path, expected = jsonl
    dataset = JsonlSegDataset(path)
    assert len(dataset) == 3
    samples = [dataset[i] for i in range(3)]
    assert [s.id for s in samples] == ["rle", "poly", "png"]
    for sample in samples:
        np.testing.assert_array_equal(sample.mask, expected[sample.id], err_msg=sample.id)
    rle, poly, png = samples
    assert rle.box == (3.0, 2.0, 9.0, 5.0) and rle.meta == {"k": 1, "source": f"{path}:1"}
    assert poly.meta["source"] == f"{path}:3"  # line numbers count blank lines
    assert png.box == (0.5, 0.5, 4.5, 4.5) and png.points == [(2.0, 2.0), (3.0, 3.0)]
    assert all(rle.mask[int(y), int(x)] == 1 for x, y in rle.points)


def test_image_root_and_datamodule(jsonl, tmp_path):
    path, _ = jsonl
    lines = [json.loads(line) for line in path.read_text().splitlines() if line]
    for line in lines:
        line["image"] = "one.jpg"
    (tmp_path / "other").mkdir()
    _write(tmp_path / "other" / "val.jsonl", lines[:1])
    dataset = JsonlSegDataset(tmp_path / "other" / "val.jsonl", image_root=tmp_path / "images")
    assert dataset[0].image_path == str(tmp_path / "images" / "one.jpg")
    dm = JsonlSegDataModule(str(path), test_path=str(tmp_path / "other" / "val.jsonl"), image_root=None)
    dm.setup("fit")
    assert sum(len(batch) for batch in dm.train_dataloader()) == 3 and dm.val_dataloader() == []
    with pytest.raises(FileNotFoundError, match="one.jpg"):  # the test file's images are not next to it
        dm.setup("test")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{broken", "Expecting property name"),
        ({"id": "x", "image": "images/one.jpg", "query": "q"}, "exactly one of"),
        (
            {"id": "x", "image": "images/one.jpg", "query": "q", "polygons": [[[1, 2]]], "mask_png": "m"},
            "exactly one",
        ),
        ({"image": "images/one.jpg", "query": "q", "polygons": []}, "missing key 'id'"),
        ({"id": "rle", "image": "images/one.jpg", "query": "q", "polygons": []}, "duplicate id 'rle'"),
        (
            {"id": "x", "image": "images/one.jpg", "query": "q", "polygons": [[[1, 2, 3]]]},
            "sample x: a polygon",
        ),
        (
            {"id": "x", "image": "images/one.jpg", "query": "q", "polygons": [], "box": [3, 0, 1, 2]},
            "'box' must",
        ),
        (
            {"id": "x", "image": "images/one.jpg", "query": "q", "mask_rle": {"size": [3, 3], "counts": "9"}},
            "mask_rle size",
        ),
    ],
)
def test_bad_lines_are_reported_with_file_and_line(jsonl, line, message):
    path, _ = jsonl
    with open(path, "a") as f:
        f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
    with pytest.raises(SampleError, match=re.escape(f"{path}:5") + ".*" + re.escape(message)):
        JsonlSegDataset(path)
    dataset = JsonlSegDataset(path, on_error="skip")
    assert len(dataset) == 3 and len(dataset.skipped) == 1


def test_missing_files_name_the_path(jsonl, tmp_path):
    path, _ = jsonl
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nope.jsonl"))):
        JsonlSegDataset(tmp_path / "nope.jsonl")
    (tmp_path / "images" / "one.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(f"{path}:1: sample rle: image not found")):
        JsonlSegDataset(path)
    assert len(JsonlSegDataset(path, on_error="skip").skipped) == 3
