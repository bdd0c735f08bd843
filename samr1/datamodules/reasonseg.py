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

from samr1.datamodules.base import OnError, SegDataModule
from samr1.datamodules.masks import annotated_sample, paint_polygons, polygon_array
from samr1.datamodules.reading import BadSampleLog, SampleDataset, report_bad, require_path
from samr1.images import image_size, load_image
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


class ReasonSegDataset(SampleDataset):
    """One ReasonSeg split. `root` is the `ReasonSeg` folder holding train/, val/, test/.

    Samples: one per image with its first text (`text[0]`), the protocol of every reported val/test number;
    with `all_texts=True` one per (image, text) pair, in text order (the DataModule uses this for training, so
    an epoch sees every query; ids then end in `#<text index>`). Images are in name order. The mask is LISA's
    (see the module doc), empty when a file has no polygons; `box` and `points` are the tight box and the
    two largest inscribed circles of its target pixels (None when empty). meta: is_sentence (long query),
    text_index, num_texts, name, split. Images are decoded when a sample is read (`samr1.images.load_image`:
    EXIF orientation applied as OpenCV (LISA) and labelme (the annotators' tool) do), and carried in
    `sample.image`; a truncated image fails then, naming the file and id.

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
        kept = 0
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
            kept += 1
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
        self.bad.summary(kept, "images")

    def where(self, index: int) -> str:
        item = self.items[index]
        return f"sample {item.id} ({item.image_path})"

    def read(self, index: int) -> SegSample:
        item = self.items[index]
        image = load_image(item.image_path)
        mask = paint_polygons(item.polygons, image.height, image.width)
        return annotated_sample(item.id, item.query, mask, image, item.image_path, dict(item.meta))


class ReasonSegDataModule(SegDataModule):
    """ReasonSeg DataModule: val and test use each image's first text (LISA's protocol).

    The loader options (splits, batch_size, eval_batch_size, num_workers, seed, on_error) are `SegDataModule`'s.

    Args:
        root: the `ReasonSeg` folder holding train/, val/, test/.
        train_all_texts: the train split yields every (image, text) pair (True) or only each image's first.
    """

    def __init__(self, root: str = "data/ReasonSeg", train_all_texts: bool = True, **loader) -> None:
        super().__init__(**loader)
        self.root = root
        self.train_all_texts = train_all_texts

    def build_dataset(self, split: str) -> ReasonSegDataset:
        all_texts = self.train_all_texts and split == self.train_split
        return ReasonSegDataset(self.root, split, on_error=self.on_error, all_texts=all_texts)
