"""Fault suite of the data path (issue 14): broken inputs are built here, and each outcome is checked exactly:
the error names the file and line (or path) and id, skipped counts are exact, `on_error: skip` holds at read
time, a crafted pickle runs nothing, and train / eval / predict see the same pixels. A fit and a validation
with an unreadable sample: tests/e2e/test_data_faults_run.py."""

from __future__ import annotations

import json
import logging
import pickle
import re

import numpy as np
import pytest
from fixtures_data import rect, write_reasonseg_item, write_refer
from PIL import Image, ImageOps

from samr1.datamodules import (
    ImageQueryDataModule,
    JsonlSegDataModule,
    JsonlSegDataset,
    ReasonSegDataset,
    RefCOCODataset,
    SampleError,
)
from samr1.datamodules.masks import decode_rle
from samr1.datamodules.reading import GuardedReads
from samr1.sample import SegSample

W, H = 16, 12  # the JSONL images' size


def _noise(path, width=W, height=H, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=95)
    return path


def _truncated_jpeg(path, width=64, height=48):
    """A JPEG whose header is intact (set-up reads its size) but whose pixel data stops at 70%."""
    _noise(path, width, height, seed=3)
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * 0.7)])
    return path


def _line(sample_id, image, **extra):
    """A valid line (a polygon mask) with `extra` keys set; a key set to None is left out."""
    line = {
        "id": sample_id,
        "image": image,
        "query": f"query {sample_id}",
        "polygons": [rect(1, 1, 4, 4)],
        **extra,
    }
    return {key: value for key, value in line.items() if value is not None}


def _jsonl(path, lines):
    """Writes `lines` (dicts as JSON, bytes as they are) one per line."""
    path.write_bytes(
        b"".join((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines)
    )
    return path


# ---------------------------------------------------------------- one image reader everywhere


def _pixels_everywhere(tmp_path, image_name, **line_extra) -> list[np.ndarray]:
    """The image as the train loader, the eval loader, predict's loader and SegSample.load_image read it."""
    path = _jsonl(tmp_path / "data.jsonl", [_line("x", image_name, **line_extra)])
    data = JsonlSegDataModule(path=str(path), val_path=str(path), batch_size=1, eval_batch_size=1)
    data.setup("fit")
    (train,) = next(iter(data.train_dataloader()))
    (val,) = next(iter(data.val_dataloader()))
    predict = ImageQueryDataModule(image=str(tmp_path / image_name), query="q")
    predict.setup("predict")
    (predicted,) = next(iter(predict.predict_dataloader()))
    from_path = SegSample(id="x", query="q", image_path=str(tmp_path / image_name)).load_image()
    return [np.asarray(s.load_image()) for s in (train, val, predicted)] + [np.asarray(from_path)]


def test_sixteen_bit_png_is_scaled_not_white_in_train_eval_and_predict(tmp_path):
    values = (np.arange(W * H, dtype=np.uint32).reshape(H, W) * 341).astype(np.uint16)  # 0 .. 65131
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    expected = np.repeat(np.rint(values / 257.0).astype(np.uint8)[..., None], 3, axis=-1)
    for pixels in _pixels_everywhere(tmp_path, "deep.png"):
        np.testing.assert_array_equal(pixels, expected)


def test_exif_rotated_jpeg_is_upright_in_train_eval_and_predict(tmp_path):
    upright = np.zeros((H, W, 3), dtype=np.uint8)  # a phone photo: 16 wide, 12 high when shown upright
    upright[:, : W // 2] = (230, 30, 30)
    upright[:, W // 2 :] = (30, 30, 230)
    stored = Image.fromarray(
        np.rot90(upright, k=1).copy()
    )  # the camera stores it turned; tag 6 turns it back
    exif = stored.getexif()
    exif[0x0112] = 6
    stored.save(tmp_path / "phone.jpg", exif=exif, quality=100)
    oracle = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "phone.jpg")).convert("RGB"))
    assert oracle.shape == (H, W, 3)  # upright: red on the left, blue on the right (JPEG blurs the seam)
    assert np.abs(oracle[:, :4].astype(int) - upright[:, :4]).max() < 8
    assert np.abs(oracle[:, -4:].astype(int) - upright[:, -4:]).max() < 8
    rle = {"size": [H, W], "counts": _rle_counts(np.zeros((H, W), dtype=bool))}
    for pixels in _pixels_everywhere(tmp_path, "phone.jpg", mask_rle=rle, polygons=None):
        np.testing.assert_array_equal(pixels, oracle)
    # An annotation in the stored (sideways) size no longer matches the picture.
    sideways = {"size": [W, H], "counts": _rle_counts(np.zeros((W, H), dtype=bool))}
    path = _jsonl(tmp_path / "sideways.jsonl", [_line("s", "phone.jpg", mask_rle=sideways, polygons=None)])
    with pytest.raises(SampleError, match=re.escape(f"{path}:1: sample s: mask_rle size [16, 12]")):
        JsonlSegDataset(path)


def _rle_counts(mask: np.ndarray) -> str:
    from fixtures_data import compressed_rle

    return compressed_rle(mask)["counts"]


# ---------------------------------------------------------------- set-up checks


@pytest.fixture
def good(tmp_path):
    _noise(tmp_path / "a.jpg")
    Image.fromarray(np.zeros((H, W, 3), dtype=np.uint8)).save(tmp_path / "rgb_mask.png")
    return tmp_path


BAD_LINES = [
    (
        {"mask_rle": {"size": [H, W], "counts": "0c0"}},
        "mask_rle runs cover 19 pixels, its size 12 x 16 has 192",
    ),
    ({"mask_rle": {"size": [H, W], "counts": "c"}}, "RLE counts 'c' end inside a run length"),
    ({"mask_png": "rgb_mask.png"}, "must have one channel (mode L, P or 1), got mode RGB"),
    ({"box": [float("nan"), 0, 3, 3]}, "'box' must hold finite numbers, got [nan, 0, 3, 3]"),
    ({"box": [0, 0, float("inf"), 3]}, "'box' must hold finite numbers, got [0, 0, inf, 3]"),
    ({"box": [0, 0, 3, 1e6]}, "'box' [0, 0, 3, 1000000.0] lies outside the 16 x 12 image"),
    ({"points": [[1e6, 2]]}, "'points' [1000000.0, 2] lies outside the 16 x 12 image"),
    ({"points": [[float("nan"), 2]]}, "'points' must be [x, y] pairs of finite numbers, got [nan, 2]"),
]


@pytest.mark.parametrize(("extra", "message"), BAD_LINES)
def test_bad_annotations_are_refused_at_setup_naming_file_line_and_id(good, extra, message):
    own_mask = "mask_rle" in extra or "mask_png" in extra
    bad = _line("bad", "a.jpg", **extra, **({"polygons": None} if own_mask else {}))
    path = _jsonl(good / "data.jsonl", [_line("ok", "a.jpg"), bad, _line("ok2", "a.jpg")])
    with pytest.raises(SampleError, match=re.escape(f"{path}:2: sample bad: ") + ".*" + re.escape(message)):
        JsonlSegDataset(path)
    skipped = JsonlSegDataset(path, on_error="skip")
    assert [item.id for item in skipped.items] == ["ok", "ok2"]
    assert len(skipped.skipped) == 1 and f"{path}:2: sample bad" in skipped.skipped[0]


def test_edges_within_two_pixels_are_accepted(good):
    line = _line("edge", "a.jpg", box=[-1.5, 0, W + 2, H + 1], points=[[W + 1, -2]])
    (item,) = JsonlSegDataset(_jsonl(good / "data.jsonl", [line])).items
    assert item.box == (-1.5, 0.0, 18.0, 13.0) and item.points == [(17.0, -2.0)]


def test_decode_rle_refuses_what_pycocotools_decodes_to_junk():
    from pycocotools import mask as mask_utils

    junk = mask_utils.decode({"size": [5, 5], "counts": b"0c0"})  # no error: 25 pixels from 19 runs' worth
    assert junk.shape == (5, 5)
    with pytest.raises(ValueError, match="RLE runs cover 19 pixels, its size 5 x 5 has 25"):
        decode_rle({"size": [5, 5], "counts": "0c0"})


def test_invalid_utf8_is_named_by_file_and_line(good):
    broken = json.dumps(_line("bad", "a.jpg")).encode().replace(b"query bad", b"query \xff")
    path = _jsonl(good / "data.jsonl", [_line("ok", "a.jpg"), broken, _line("ok2", "a.jpg")])
    column = broken.index(b"\xff") + 1
    with pytest.raises(SampleError, match=re.escape(f"{path}:2: not UTF-8: byte 0xff at column {column}")):
        JsonlSegDataset(path)
    skipped = JsonlSegDataset(path, on_error="skip")
    assert [item.id for item in skipped.items] == ["ok", "ok2"] and len(skipped.skipped) == 1


def test_a_byte_order_mark_at_the_start_is_accepted(good):
    path = good / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(_line("first", "a.jpg")).encode() + b"\n")
    (item,) = JsonlSegDataset(path).items
    assert item.id == "first" and item.meta["source"] == f"{path}:1"


def test_refcoco_bad_rle_and_nan_box_are_refused_at_setup(tmp_path):
    data_root, image_root = tmp_path / "refer", tmp_path / "train2014"
    write_refer(data_root, image_root)
    instances_path = data_root / "refcocog" / "instances.json"
    instances = json.loads(instances_path.read_text())
    for ann in instances["annotations"]:
        if ann["id"] == 11:  # the "bar" of image 1 (20 x 16): train ref 1, test ref 3
            ann["segmentation"] = {"size": [16, 20], "counts": "0c0"}
        if ann["id"] == 13:  # test ref 4
            ann["bbox"] = [float("nan"), 1, 10, 8]
    instances_path.write_text(json.dumps(instances))
    with pytest.raises(SampleError, match=re.escape("RLE runs cover 19 pixels, its size 16 x 20 has 320")):
        RefCOCODataset(data_root, image_root, split="test")
    test = RefCOCODataset(data_root, image_root, split="test", on_error="skip")
    assert len(test) == 0 and len(test.skipped) == 3  # "middle bar", "overlapping pair", "two rects"
    assert sum("'box' must hold finite numbers" in m for m in test.skipped) == 2
    train = RefCOCODataset(data_root, image_root, split="train", on_error="skip")
    assert len(train) == 3 and len(train.skipped) == 1 and "ref_id 1" in train.skipped[0]


def test_reasonseg_summary_counts_kept_images(tmp_path, caplog):
    val = tmp_path / "ReasonSeg" / "val"
    shapes = [{"label": "target", "points": rect(2, 2, 5, 5)}]
    for name in ("a", "b"):
        write_reasonseg_item(val, name, {"text": ["one", "two"], "is_sentence": False, "shapes": shapes})
    for name in ("c", "d", "e"):
        write_reasonseg_item(val, name, {"text": ["x"], "is_sentence": False})  # no "shapes": broken
    with caplog.at_level(logging.WARNING):
        dataset = ReasonSegDataset(tmp_path / "ReasonSeg", "val", on_error="skip", all_texts=True)
    assert len(dataset) == 4 and len(dataset.skipped) == 3
    assert "ReasonSeg val: skipped 3 images; kept 2" in caplog.text


# ---------------------------------------------------------------- the refer pickle


class _RunsCode:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def test_crafted_refs_pickle_is_refused_and_runs_nothing(tmp_path):
    data_root, image_root = tmp_path / "refer", tmp_path / "train2014"
    write_refer(data_root, image_root)
    refs_path = data_root / "refcocog" / "refs(umd).p"
    marker = tmp_path / "ran.txt"
    crafted = pickle.dumps([{"split": "val", "sentences": []}, _RunsCode(marker)], protocol=2)
    pickle.loads(crafted)  # the fixture is real: a plain unpickler runs it
    assert marker.read_text() == "ran"
    marker.unlink()
    refs_path.write_bytes(crafted)
    # Protocol 2 (the release's, written by Python 2) names builtins by their Python 2 module.
    refused = re.escape(f"refs pickle {refs_path} refused: it names __builtin__.exec")
    with pytest.raises(ValueError, match=refused):
        RefCOCODataset(data_root, image_root, split="val")
    assert not marker.exists()


def test_refs_pickle_of_builtin_values_loads(tmp_path):
    from samr1.datamodules.refcoco import load_refs

    refs = [{"split": "val", "sent_ids": {1, 2}, "box": (1.0, 2.0), "raw": "caf\u00e9", "n": 10**20}]
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        path = tmp_path / f"refs{protocol}.p"
        path.write_bytes(pickle.dumps(refs, protocol=protocol))
        assert load_refs(path) == refs


# ---------------------------------------------------------------- read time


@pytest.fixture
def one_truncated(tmp_path):
    """a, b, c: b's image is a truncated JPEG (its header reads fine)."""
    _noise(tmp_path / "a.jpg")
    _truncated_jpeg(tmp_path / "b.jpg")
    _noise(tmp_path / "c.jpg", seed=2)
    box = [0, 0, 4, 4]  # inside every image, so the lines pass set-up
    lines = [_line(n, f"{n}.jpg", box=box) for n in "abc"]
    return _jsonl(tmp_path / "data.jsonl", lines)


def test_truncated_image_passes_setup_and_fails_when_read_naming_file_line_id(one_truncated):
    dataset = JsonlSegDataset(one_truncated)
    assert len(dataset) == 3
    image = one_truncated.parent / "b.jpg"
    message = f"{one_truncated}:2: sample b: cannot read image {image}: image file is truncated"
    with pytest.raises(SampleError, match=re.escape(message)) as info:
        dataset[1]
    assert info.value.sample_id == "b"


def test_training_under_skip_reads_the_next_sample_and_counts_the_failure_once(one_truncated):
    data = JsonlSegDataModule(path=str(one_truncated), batch_size=3, on_error="skip")
    data.setup("fit")
    loader = data.train_dataloader()
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        order = list(loader.sampler)
        (batch,) = list(loader)
        data.on_before_batch_transfer(batch, 0)
        assert [s.id for s in batch] == ["abc"[i if i != 1 else 2] for i in order]  # b -> c, the next one
        (failure,) = batch.failures
        assert (failure.sample_id, failure.index, failure.replaced_by) == ("b", 1, 2)
    assert data.read_failures.count("train") == 1  # seen in both epochs, counted once
    assert data.dataset("train").skipped == [failure.message]


def test_evaluation_under_skip_leaves_the_sample_out_and_error_stops(one_truncated):
    data = JsonlSegDataModule(path=None, val_path=str(one_truncated), eval_batch_size=2, on_error="skip")
    data.setup("validate")
    batches = list(data.val_dataloader())
    assert [[s.id for s in b] for b in batches] == [["a"], ["c"]]
    assert [[f.sample_id for f in b.failures] for b in batches] == [["b"], []]
    strict = JsonlSegDataModule(path=None, val_path=str(one_truncated), eval_batch_size=2)
    strict.setup("validate")
    with pytest.raises(SampleError, match=re.escape(f"{one_truncated}:2: sample b: cannot read image")):
        list(strict.val_dataloader())


def test_failures_travel_from_loader_workers(one_truncated):
    data = JsonlSegDataModule(
        path=None, val_path=str(one_truncated), eval_batch_size=3, on_error="skip", num_workers=1
    )
    data.setup("validate")
    (batch,) = list(data.val_dataloader())
    assert [s.id for s in batch] == ["a", "c"] and [f.sample_id for f in batch.failures] == ["b"]
    assert data.transfer_batch_to_device(batch, "cpu", 0).failures == batch.failures  # kept for the evaluator


def test_training_with_nothing_readable_is_an_error(tmp_path):
    _truncated_jpeg(tmp_path / "b.jpg")
    path = _jsonl(tmp_path / "data.jsonl", [_line(n, "b.jpg", box=[0, 0, 4, 4]) for n in "xy"])
    reads = GuardedReads(JsonlSegDataset(path), "skip", substitute=True, split="train")
    with pytest.raises(SampleError, match=r"none of its 2 samples could be read; the first: .*:1: sample x"):
        reads[0]


def test_every_dataset_names_the_sample_it_cannot_read(tmp_path):
    val = tmp_path / "ReasonSeg" / "val"
    write_reasonseg_item(val, "r", {"text": ["x"], "is_sentence": False, "shapes": []})
    _truncated_jpeg(val / "r.jpg", 24, 20)  # LISA's layout: r.jpg + r.json
    with pytest.raises(
        SampleError, match=re.escape(f"ReasonSeg val: sample r ({val / 'r.jpg'}): cannot read")
    ):
        ReasonSegDataset(tmp_path / "ReasonSeg", "val")[0]
    data_root, image_root = tmp_path / "refer", tmp_path / "train2014"
    write_refer(data_root, image_root)
    image = image_root / "COCO_train2014_000000000002.jpg"  # image 2 (24 x 18): the val ref
    _truncated_jpeg(image, 24, 18)
    with pytest.raises(
        SampleError, match=re.escape(f"sample refcocog-104 (ann_id 12, {image}): cannot read")
    ):
        RefCOCODataset(data_root, image_root, split="val")[0]
    _truncated_jpeg(tmp_path / "mine.jpg")
    predict = ImageQueryDataModule(images=[str(tmp_path / "mine.jpg")], query="q", on_error="skip")
    predict.setup("predict")
    (batch,) = list(predict.predict_dataloader())
    assert list(batch) == [] and [f.sample_id for f in batch.failures] == ["mine"]
