"""ReasonSeg as LISA released it: `<root>/<split>/<name>.jpg` with `<name>.json` (labelme-style polygons).

The mask follows LISA's `get_mask_from_json` exactly, so our masks are pixel-identical to the ones every
published ReasonSeg number was computed on: label "flag" is skipped, a label containing "ignore" paints 255
and any other label 1; polygons are painted in decreasing area order (outline + fill, int32-truncated points).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps
from torch.utils.data import Dataset

from samr1.datamodules.base import BadSampleLog, OnError, SegDataModule, image_size, report_bad, require_path
from samr1.datamodules.masks import inscribed_circle_points, paint_polygons, polygon_array, tight_box
from samr1.sample import SegSample

log = logging.getLogger(__name__)


def read_json_lisa(path: Path) -> Any:
    """JSON decoded as UTF-8, falling back to cp1252 (a few ReasonSeg files are cp1252, as LISA handles)."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("cp1252")
    return json.loads(text)


def labelled_polygons(shapes: list[dict[str, Any]]) -> list[tuple[list, int]]:
    """LISA's label rule: (points, value) for every shape but "flag"; 255 if the label contains "ignore"."""
    polygons = []
    for shape in shapes:
        label = str(shape["label"]).lower()
        if label == "flag":  # deprecated annotations, skipped by LISA
            continue
        polygons.append((shape["points"], 255 if "ignore" in label else 1))
    return polygons


@dataclass(frozen=True)
class _Query:
    id: str
    query: str
    image_path: Path
    polygons: list[tuple[list, int]]
    meta: dict[str, Any]


def _parse(annotation: Any) -> tuple[list[str], bool, list[tuple[list, int]]]:
    """(texts, is_sentence, polygons) of a ReasonSeg JSON; ValueError/KeyError/TypeError when malformed."""
    texts = annotation["text"]
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError(f"'text' must be a non-empty list of strings, got {annotation['text']!r:.80}")
    polygons = labelled_polygons(annotation["shapes"])
    for points, _ in polygons:
        polygon_array(points)  # validates now: a broken polygon is reported at setup, not mid-epoch
    return texts, bool(annotation["is_sentence"]), polygons


class ReasonSegDataset(Dataset):
    """One ReasonSeg split. `root` is the `ReasonSeg` folder holding train/, val/, test/.

    Samples: one per image with its first text (`text[0]`), the protocol of every reported val/test number;
    with `all_texts=True` one per (image, text) pair, in text order (the DataModule uses this for training, so
    an epoch sees every query; ids then end in `#<text index>`). Images are in name order. The mask is LISA's
    (see the module doc), empty when a file has no polygons; `box` and `points` are the tight box and the
    two largest inscribed circles of its target pixels (None when empty). meta: is_sentence (long query),
    text_index, num_texts, name, split. Images are decoded when a sample is read, with their EXIF orientation
    applied as OpenCV (LISA) and labelme (the annotators' tool) do, and carried in `sample.image`.

    A `.jpg` without its `.json` (or the reverse) is a missing file; with broken JSON it follows `on_error`.
    """

    def __init__(
        self, root: str | Path, split: str = "val", on_error: OnError = "error", all_texts: bool = False
    ) -> None:
        folder = require_path(Path(root) / split, f"ReasonSeg {split} folder")
        self.name = f"ReasonSeg {split}"
        self.bad = BadSampleLog(on_error, self.name)
        names = sorted({p.stem for p in folder.glob("*.jpg")} | {p.stem for p in folder.glob("*.json")})
        self.items: list[_Query] = []
        for name in names:
            image_path, json_path = folder / f"{name}.jpg", folder / f"{name}.json"
            where = f"sample {name} ({json_path})"
            try:
                require_path(json_path, "annotation")
                texts, is_sentence, polygons = _parse(read_json_lisa(json_path))
                image_size(image_path)
            except (FileNotFoundError, ValueError, KeyError, TypeError) as err:
                report_bad(self.bad, err, where)
                continue
            chosen = range(len(texts)) if all_texts else [0]
            for index in chosen:
                meta = {"is_sentence": is_sentence, "text_index": index, "num_texts": len(texts)}
                self.items.append(
                    _Query(
                        id=f"{name}#{index}" if all_texts else name,
                        query=texts[index],
                        image_path=image_path,
                        polygons=polygons,
                        meta={**meta, "name": name, "split": split},
                    )
                )
        if self.bad.skipped:
            log.warning("%s: skipped %d images; kept %d", self.name, len(self.bad.skipped), len(names))

    @property
    def skipped(self) -> list[str]:
        """One message per image dropped under `on_error="skip"`."""
        return self.bad.skipped

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> SegSample:
        item = self.items[index]
        try:
            with Image.open(item.image_path) as raw:
                image = ImageOps.exif_transpose(raw).convert("RGB")
        except (OSError, ValueError) as err:
            raise ValueError(
                f"{self.name}: sample {item.id}: cannot read image {item.image_path}: {err}"
            ) from err
        mask = paint_polygons(item.polygons, image.height, image.width)
        target = mask == 1
        return SegSample(
            id=item.id,
            query=item.query,
            mask=mask,
            image=image,
            image_path=str(item.image_path),
            box=tight_box(target),
            points=inscribed_circle_points(target),
            meta=dict(item.meta),
        )


class ReasonSegDataModule(SegDataModule):
    """ReasonSeg DataModule. `train_all_texts`: the train split yields every (image, text) pair (True) or
    only each image's first text; val and test always use the first text (LISA's protocol)."""

    def __init__(
        self,
        root: str = "data/ReasonSeg",
        train_all_texts: bool = True,
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
        self.root = root
        self.train_all_texts = train_all_texts

    def build_dataset(self, split: str) -> ReasonSegDataset:
        all_texts = self.train_all_texts and split == self.train_split
        return ReasonSegDataset(self.root, split, on_error=self.on_error, all_texts=all_texts)
