"""RefCOCODataset on a small copy of the refer toolkit layout: counts, masks, boxes, splits, broken files."""

from __future__ import annotations

import json
import logging
import re

import numpy as np
import pytest
import yaml
from fixtures_data import write_refer

from samr1.datamodules import RefCOCODataModule, RefCOCODataset, SampleError


@pytest.fixture
def refer(tmp_path):
    data_root, image_root = tmp_path / "refer", tmp_path / "train2014"
    expected = write_refer(data_root, image_root)
    return data_root, image_root, expected


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_every_sentence_is_a_sample_with_its_mask_and_box(refer, split):
    data_root, image_root, expected = refer
    dataset = RefCOCODataset(data_root, image_root, "refcocog", "umd", split)
    assert len(dataset) == len(expected[split])  # train 4, val 2, test 3: sentences, not refs
    for index, (sample_id, sent, mask, box) in enumerate(expected[split]):
        sample = dataset[index]
        assert (sample.id, sample.query, sample.box) == (sample_id, sent, box)
        assert sample.mask.dtype == np.uint8
        np.testing.assert_array_equal(sample.mask, mask.astype(np.uint8))
        assert sample.meta["raw"] == sent.capitalize()
        assert sample.meta["category"] == "thing"
        assert sample.load_image().size == mask.shape[::-1]
        assert all(mask[int(y), int(x)] for x, y in sample.points)
    assert not dataset.skipped


def test_sample_meta_names_the_ref(refer):
    data_root, image_root, _ = refer
    sample = RefCOCODataset(data_root, image_root, split="val")[1]
    assert {k: sample.meta[k] for k in ("ref_id", "ann_id", "image_id", "sent_id")} == {
        "ref_id": 2,
        "ann_id": 12,
        "image_id": 2,
        "sent_id": 105,
    }
    assert sample.image_path.endswith("COCO_train2014_000000000002.jpg")


def test_unc_splits_and_unknown_split(tmp_path):
    expected = write_refer(tmp_path / "refer", tmp_path / "img", dataset="refcoco", split_by="unc")
    for split in ("train", "val", "testA", "testB"):
        assert len(RefCOCODataset(tmp_path / "refer", tmp_path / "img", "refcoco", "unc", split)) == len(
            expected[split]
        )
    with pytest.raises(ValueError, match="available: testA, testB, train, val"):
        RefCOCODataset(tmp_path / "refer", tmp_path / "img", "refcoco", "unc", "test")


def test_missing_index_files_name_the_path(refer):
    data_root, image_root, _ = refer
    with pytest.raises(FileNotFoundError, match=r"refs\(google\)\.p"):
        RefCOCODataset(data_root, image_root, split_by="google")
    with pytest.raises(FileNotFoundError, match="refcoco\\+"):
        RefCOCODataset(data_root, image_root, dataset="refcoco+")
    (data_root / "refcocog" / "instances.json").unlink()
    with pytest.raises(FileNotFoundError, match="instances.json"):
        RefCOCODataset(data_root, image_root)


def test_missing_image_errors_or_is_skipped_and_counted(refer, caplog):
    data_root, image_root, expected = refer
    missing = image_root / "COCO_train2014_000000000001.jpg"
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        RefCOCODataset(data_root, image_root, split="train")
    with caplog.at_level(logging.WARNING):
        dataset = RefCOCODataset(data_root, image_root, split="train", on_error="skip")
    assert len(dataset) == 0 and len(dataset.skipped) == len(expected["train"]) == 4
    assert "refcocog-100" in dataset.skipped[0] and str(missing) in dataset.skipped[0]
    assert "skipped 4 sentences" in caplog.text
    assert len(RefCOCODataset(data_root, image_root, split="val")) == 2  # other images are unaffected


def test_broken_annotation_and_wrong_image_size(refer):
    data_root, image_root, _ = refer
    path = data_root / "refcocog" / "instances.json"
    instances = json.loads(path.read_text())
    # val's ref loses its annotation; image 3 (test) does not match its file
    instances["annotations"] = [a for a in instances["annotations"] if a["id"] != 12]
    instances["images"][2]["width"] = 99
    path.write_text(json.dumps(instances))
    with pytest.raises(SampleError, match="refcocog-104.*ref_id 2"):
        RefCOCODataset(data_root, image_root, split="val")
    with pytest.raises(SampleError, match="instances.json says 99x10"):
        RefCOCODataset(data_root, image_root, split="test")
    dataset = RefCOCODataset(data_root, image_root, split="test", on_error="skip")
    assert len(dataset) == 1 and len(dataset.skipped) == 2


def test_datamodule_builds_the_configured_splits(refer):
    data_root, image_root, expected = refer
    dm = RefCOCODataModule(
        str(data_root), str(image_root), train_split=None, val_split=None, test_split="test"
    )
    dm.setup("test")
    batches = list(dm.test_dataloader())
    assert [s.id for batch in batches for s in batch] == [e[0] for e in expected["test"]]


def test_every_data_config_parses_against_the_datamodule_signatures():
    from pathlib import Path

    from jsonargparse import ArgumentParser

    from samr1.datamodules import SegDataModule

    configs = sorted((Path(__file__).parents[3] / "configs" / "data").glob("*.yaml"))
    assert len(configs) == 14
    for path in configs:
        parser = ArgumentParser()
        parser.add_subclass_arguments(SegDataModule, "data")
        # Some data configs also set evaluation options under `model`; only `data` is checked here.
        section = {"data": yaml.safe_load(path.read_text())["data"]}
        config = parser.parse_object(section)  # unknown or mistyped init_args fail here
        assert config.data.class_path.startswith("samr1.datamodules."), path.name
