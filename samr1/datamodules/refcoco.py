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

from samr1.datamodules.base import OnError, SegDataModule
from samr1.datamodules.checks import check_box, check_coco_segmentation
from samr1.datamodules.masks import annotated_sample, decode_coco_segmentation
from samr1.datamodules.reading import BadSampleLog, SampleDataset, report_bad, require_path
from samr1.images import image_size, load_image
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


# What a refs pickle may name besides the opcodes for lists, dicts, tuples, strings, bytes and numbers (which
# need no lookup): harmless builtin containers, under their Python 3 or Python 2 (the release's) module name.
# Anything else (a function, a class) is refused unloaded.
_PICKLE_ALLOWED = {(module, name) for module in ("builtins", "__builtin__") for name in ("set", "frozenset")}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles only builtin containers and scalars: a global other than set / frozenset (`os.system`, a
    class) raises `pickle.UnpicklingError` before anything is called, so nothing in the file runs."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _PICKLE_ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"it names {module}.{name}; a refs pickle holds only lists, dicts, strings and numbers"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("it holds a persistent id; a refs pickle holds only builtin values")


def load_refs(path: Path) -> list[dict[str, Any]]:
    """The refer toolkit's refs list, read with `RestrictedUnpickler` (only builtin containers and scalars,
    so a crafted file cannot run code). ValueError naming the file for anything else, or a damaged file."""
    with open(require_path(path, "refs pickle"), "rb") as f:
        try:
            refs = RestrictedUnpickler(f).load()
        except (
            pickle.UnpicklingError,
            EOFError,
            ValueError,
            TypeError,
            IndexError,
            KeyError,
            AttributeError,
        ) as err:
            raise ValueError(f"refs pickle {path} refused: {err}") from err
    if not isinstance(refs, list) or not all(isinstance(ref, dict) for ref in refs):
        raise ValueError(f"refs pickle {path} must hold a list of refs (dicts), got {type(refs).__name__}")
    return refs


class RefCOCODataset(SampleDataset):
    """Expression-level RefCOCO / RefCOCO+ / RefCOCOg split.

    `dataset` is the folder under `data_root` ("refcoco", "refcoco+", "refcocog"); `split_by` the refs pickle
    ("unc", "umd", "google"); `split` one of the splits present in that pickle (unc: train, val, testA, testB;
    umd: train, val, test). Each sample: `query` = the sentence's `sent`; mask = the annotation's segmentation
    (polygons or RLE) decoded and unioned with pycocotools; `box` = the annotation's xywh as x1, y1, x2, y2;
    `points` = the two largest inscribed circles' centres of the mask; meta: raw, ref_id, ann_id, image_id,
    sent_id, category. Missing index files raise at construction; broken refs (a segmentation that does not
    decode to the image's size, a box that is not finite or lies outside the image) and missing or
    unreadable images follow `on_error` ("skip" counts them in `skipped`). Images are read with
    `samr1.images.load_image` when a sample is read (EXIF orientation applied, as OpenCV's imread in the
    refer toolkit and LISA does), and must have the size instances.json gives.
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
        with open(instances_path, encoding="utf-8-sig") as f:
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
        self.bad.summary(len(self.items), "sentences")

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
            height, width = int(image["height"]), int(image["width"])
            x, y, w, h = ann["bbox"]
            box = check_box([x, y, x + w, y + h], (width, height))
            check_coco_segmentation(ann["segmentation"], height, width)
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
                box=box,
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

    def where(self, index: int) -> str:
        item = self.items[index]
        return f"sample {item.id} (ann_id {item.meta['ann_id']}, {item.image_path})"

    def read(self, index: int) -> SegSample:
        item = self.items[index]
        # Masks are decoded lazily (a split's masks do not fit in memory); set-up checked that they decode.
        target = decode_coco_segmentation(item.segmentation, item.height, item.width)
        image = load_image(item.image_path)
        if image.size != (item.width, item.height):
            raise ValueError(
                f"{item.image_path} decodes to {image.size}, instances.json says {item.width}x{item.height}"
            )
        mask = target.astype(np.uint8)
        return annotated_sample(item.id, item.query, mask, image, item.image_path, dict(item.meta), item.box)


class RefCOCODataModule(SegDataModule):
    """RefCOCO / RefCOCO+ / RefCOCOg DataModule, one sample per referring sentence.

    The loader options (the splits each stage reads, e.g. `test_split: testA`, batch_size, eval_batch_size,
    num_workers, seed, on_error) are `SegDataModule`'s.

    Args:
        data_root: folder holding `<dataset>/refs(<split_by>).p` and `<dataset>/instances.json`.
        image_root: the COCO train2014 images.
        dataset: "refcoco", "refcoco+" or "refcocog".
        split_by: the refs pickle: "unc", "umd" or "google".
    """

    def __init__(
        self,
        data_root: str = "data/refer",
        image_root: str = "data/coco/train2014",
        dataset: str = "refcocog",
        split_by: str = "umd",
        **loader,
    ) -> None:
        super().__init__(**loader)
        self.data_root, self.image_root = data_root, image_root
        self.dataset_name, self.split_by = dataset, split_by

    def build_dataset(self, split: str) -> RefCOCODataset:
        return RefCOCODataset(
            self.data_root, self.image_root, self.dataset_name, self.split_by, split, on_error=self.on_error
        )
