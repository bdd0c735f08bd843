"""RefCOCO, RefCOCO+ and RefCOCOg as the refer toolkit ships them, one sample per referring sentence.

Layout: `<data_root>/<dataset>/refs(<split_by>).p` (a pickled list of refs) and
`<data_root>/<dataset>/instances.json` (COCO style); images are COCO train2014 files under `image_root`, named
as in instances.json (the pickle's `file_name` is not a real file). Every sentence of every ref in the split is
a sample (the expression-level protocol every paper reports), in the pickle's order.
"""

from __future__ import annotations

import json
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from samr1.datamodules.base import BadSampleLog, OnError, SegDataModule, image_size, report_bad, require_path
from samr1.datamodules.masks import decode_coco_segmentation, inscribed_circle_points
from samr1.sample import SegSample

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Expression:
    id: str
    query: str
    image_path: Path
    height: int
    width: int
    segmentation: Any
    box: tuple[float, float, float, float]
    meta: dict[str, Any]


def load_refs(path: Path) -> list[dict[str, Any]]:
    """The refer toolkit's refs list. The file is a pickle: only load the official release (or one you
    made); unpickling runs code from the file."""
    with open(require_path(path, "refs pickle"), "rb") as f:
        return pickle.load(f)  # noqa: S301 - the official, trusted refer toolkit file


class RefCOCODataset(Dataset):
    """Expression-level RefCOCO / RefCOCO+ / RefCOCOg split.

    `dataset` is the folder under `data_root` ("refcoco", "refcoco+", "refcocog"); `split_by` the refs pickle
    ("unc", "umd", "google"); `split` one of the splits present in that pickle (unc: train, val, testA, testB;
    umd: train, val, test). Each sample: `query` = the sentence's `sent`; mask = the annotation's segmentation
    (polygons or RLE) decoded and unioned with pycocotools; `box` = the annotation's xywh as x1, y1, x2, y2;
    `points` = the two largest inscribed circles' centres of the mask; meta: raw, ref_id, ann_id, image_id,
    sent_id, category. Missing index files raise at construction; broken refs and missing or unreadable
    images follow `on_error` ("skip" counts them in `skipped`).
    """

    def __init__(
        self,
        data_root: str | Path,
        image_root: str | Path,
        dataset: str = "refcocog",
        split_by: str = "umd",
        split: str = "val",
        on_error: OnError = "error",
    ) -> None:
        folder = require_path(Path(data_root) / dataset, f"{dataset} folder")
        self.image_root = require_path(Path(image_root), "image root")
        self.name = f"{dataset}({split_by}) {split}"
        self.bad = BadSampleLog(on_error, self.name)
        refs_path = folder / f"refs({split_by}).p"
        instances_path = require_path(folder / "instances.json", "instances.json")
        refs = load_refs(refs_path)
        available = sorted({str(ref.get("split")) for ref in refs})
        if split not in available:
            raise ValueError(f"{refs_path} has no split {split!r}; available: {', '.join(available)}")
        with open(instances_path, encoding="utf-8") as f:
            instances = json.load(f)
        images = {image["id"]: image for image in instances["images"]}
        annotations = {ann["id"]: ann for ann in instances["annotations"]}
        categories = {cat["id"]: cat["name"] for cat in instances.get("categories", [])}
        self.items: list[_Expression] = []
        self._image_checks: dict[Path, Exception | None] = {}
        for ref in refs:
            if ref.get("split") == split:
                self.items.extend(self._expressions(ref, images, annotations, categories, dataset, refs_path))
        self._image_checks.clear()  # only needed while indexing; keeps the dataset light for loader workers
        if self.bad.skipped:
            log.warning(
                "%s: skipped %d sentences; kept %d", self.name, len(self.bad.skipped), len(self.items)
            )

    def _expressions(self, ref, images, annotations, categories, dataset, refs_path) -> list[_Expression]:
        """The ref's sentences as samples; [] (each reported) when the ref or its image is broken."""
        sentences = ref.get("sentences") or []
        ids = [f"{dataset}-{s.get('sent_id') if isinstance(s, dict) else '?'}" for s in sentences]
        where = f"{refs_path} ref_id {ref.get('ref_id')}"
        try:
            if not sentences:
                raise ValueError("ref has no sentences")
            ann = annotations[ref["ann_id"]]
            image = images[ref["image_id"]]
            x, y, w, h = (float(v) for v in ann["bbox"])
            height, width = int(image["height"]), int(image["width"])
            image_path = self.image_root / image["file_name"]
            queries = [(sentence["sent_id"], sentence["sent"], sentence.get("raw")) for sentence in sentences]
            error = self._check_image(image_path, (width, height))
        except (KeyError, TypeError, ValueError) as err:
            error = err
        if error is not None:
            for sample_id in ids or ["(no sentences)"]:
                report_bad(self.bad, error, f"sample {sample_id} ({where})")
            return []
        base = {
            "dataset": dataset,
            "ref_id": ref.get("ref_id"),
            "ann_id": ref["ann_id"],
            "image_id": ref["image_id"],
            "category": categories.get(ref.get("category_id")),
        }
        return [
            _Expression(
                id=sample_id,
                query=sent,
                image_path=image_path,
                height=height,
                width=width,
                segmentation=ann["segmentation"],
                box=(x, y, x + w, y + h),
                meta={**base, "sent_id": sent_id, "raw": sent if raw is None else raw},
            )
            for sample_id, (sent_id, sent, raw) in zip(ids, queries)
        ]

    def _check_image(self, path: Path, size: tuple[int, int]) -> Exception | None:
        """None if the image exists, reads and has the size instances.json gives; the error otherwise.
        Cached: an image is shared by several refs."""
        if path not in self._image_checks:
            try:
                actual = image_size(path)
                if actual != size:
                    raise ValueError(
                        f"{path} is {actual[0]}x{actual[1]}, instances.json says {size[0]}x{size[1]}"
                    )
                self._image_checks[path] = None
            except (FileNotFoundError, ValueError) as err:
                self._image_checks[path] = err
        return self._image_checks[path]

    @property
    def skipped(self) -> list[str]:
        """One message per sentence dropped under `on_error="skip"` (its ref or image was broken)."""
        return self.bad.skipped

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> SegSample:
        item = self.items[index]
        try:
            target = decode_coco_segmentation(item.segmentation, item.height, item.width)
        except (ValueError, TypeError, KeyError) as err:
            # Decoding is lazy (a split's masks do not fit in memory), so a broken polygon surfaces here.
            raise ValueError(f"{self.name}: sample {item.id} (ann_id {item.meta['ann_id']}): {err}") from err
        return SegSample(
            id=item.id,
            query=item.query,
            mask=target.astype(np.uint8),
            image_path=str(item.image_path),
            box=item.box,
            points=inscribed_circle_points(target),
            meta=dict(item.meta),
        )


class RefCOCODataModule(SegDataModule):
    """RefCOCO / RefCOCO+ / RefCOCOg DataModule; `dataset`, `split_by` pick the refs pickle, the base args the
    splits each stage reads (e.g. `test_split: testA`)."""

    def __init__(
        self,
        data_root: str = "data/refer",
        image_root: str = "data/coco/train2014",
        dataset: str = "refcocog",
        split_by: str = "umd",
        train_split: str | None = "train",
        val_split: str | None = "val",
        test_split: str | None = "test",
        batch_size: int = 2,
        eval_batch_size: int = 4,
        num_workers: int = 0,
        seed: int = 0,
        on_error: OnError = "error",
    ) -> None:
        super().__init__(
            train_split=train_split,
            val_split=val_split,
            test_split=test_split,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            seed=seed,
            on_error=on_error,
        )
        self.data_root, self.image_root = data_root, image_root
        self.dataset_name, self.split_by = dataset, split_by

    def build_dataset(self, split: str) -> RefCOCODataset:
        return RefCOCODataset(
            self.data_root, self.image_root, self.dataset_name, self.split_by, split, on_error=self.on_error
        )
