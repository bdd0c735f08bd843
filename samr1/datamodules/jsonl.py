"""A generic JSONL segmentation format (documented in docs/data.md); `samr1 prepare` writes it.

One JSON object per line:
    {"id": str, "image": path, "query": str,
     one of "mask_rle": {"size": [h, w], "counts": str} | "polygons": [[[x, y], ...], ...] | "mask_png": path,
     optional "box": [x1, y1, x2, y2], "points": [[x, y], ...], "meta": {...}}
"image" is relative to `image_root` when given, else to the JSONL file's folder; "mask_png" always to the JSONL
file's folder (absolute paths are kept as they are).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from samr1.datamodules.base import OnError, SegDataModule
from samr1.datamodules.checks import check_box, check_mask_png, check_points, check_rle
from samr1.datamodules.masks import (
    annotated_sample,
    decode_rle,
    paint_polygons,
    polygon_array,
)
from samr1.datamodules.reading import BadSampleLog, SampleDataset, report_bad, require_path
from samr1.images import image_info, load_image, open_image
from samr1.sample import SegSample

log = logging.getLogger(__name__)

MASK_KEYS = ("mask_rle", "polygons", "mask_png")


@dataclass(frozen=True)
class _Record:
    id: str
    query: str
    image_path: Path
    size: tuple[int, int]  # (width, height) of the upright image
    mask_kind: str
    mask_value: Any  # the RLE dict, the polygon list, or the PNG's Path
    box: tuple[float, float, float, float] | None
    points: list[tuple[float, float]] | None
    meta: dict[str, Any]


def png_mask(path: Path) -> np.ndarray:
    """uint8 mask of a single-channel PNG: 255 stays 255 (ignored), any other non-zero value becomes 1."""
    image = open_image(path)
    if image.mode not in ("L", "P", "1"):
        raise ValueError(f"mask PNG {path} must have one channel (mode L, P or 1), got mode {image.mode}")
    # Mode "1" reads as bool: True is target (convert("L") would turn it into 255, i.e. ignored).
    values = np.asarray(image).astype(np.uint8)
    mask = (values != 0).astype(np.uint8)
    mask[values == 255] = 255
    return mask


def jsonl_lines(path: Path):
    """(line number, text) of each non-blank line, decoded as UTF-8 (a byte-order mark at the start of the
    file is dropped); a line that is not UTF-8 comes as (number, UnicodeDecodeError) so it can be reported
    with its line and follow `on_error` like any other broken line."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                yield number, err
                continue
            if text.strip():
                yield number, text


class JsonlSegDataset(SampleDataset):
    """Samples of one JSONL file, in line order; blank lines are ignored.

    Masks: `mask_rle` is the target (it cannot carry ignored pixels); `polygons` are target polygons,
    rasterised as LISA does (int32-truncated points, outline + fill) at the image's size; `mask_png` is read as
    non-zero = target and 255 = ignored. `box` and `points` default to the mask's tight box and the centres of
    its two largest inscribed circles. meta: the line's `meta` plus `source` ("<file>:<line>"). Images are
    read with `samr1.images.load_image` (EXIF orientation applied, every mode scaled to RGB) when a sample is
    read; sizes are the upright image's.
    Missing JSONL file: FileNotFoundError at construction. A line that is not UTF-8 or not JSON, a duplicate
    id, a missing or unreadable image or mask PNG, an RLE that does not decode to the image's size, a mask
    PNG that is not single-channel, a box or points that are not finite or lie outside the image: reported
    as "<file>:<line>" with the id, following `on_error`. What fails only when decoded (a truncated image)
    fails when the sample is read, named the same way.
    """

    def __init__(
        self, path: str | Path, image_root: str | Path | None = None, on_error: OnError = "error"
    ) -> None:
        self.path = require_path(Path(path), "JSONL file")
        base = self.path.parent if image_root is None else require_path(Path(image_root), "image root")
        self.name = str(self.path)
        self.bad = BadSampleLog(on_error, self.name)
        self.items: list[_Record] = []
        seen: set[str] = set()
        for number, text in jsonl_lines(self.path):
            where = f"{self.path}:{number}"
            try:
                if isinstance(text, UnicodeDecodeError):
                    raise ValueError(
                        f"not UTF-8: byte {text.object[text.start]:#04x} at column {text.start + 1}"
                    )
                record = self._record(json.loads(text), base, self.path.parent, where)
                if record.id in seen:
                    raise ValueError(f"duplicate id {record.id!r}")
            except KeyError as err:
                report_bad(self.bad, ValueError(f"missing key {err}"), where)
                continue
            except (FileNotFoundError, ValueError, TypeError) as err:
                report_bad(self.bad, err, where)
                continue
            seen.add(record.id)
            self.items.append(record)
        self.bad.summary(len(self.items), "lines")

    @staticmethod
    def _record(line: Any, base: Path, folder: Path, where: str) -> _Record:
        if not isinstance(line, dict):
            raise ValueError(f"expected a JSON object, got {type(line).__name__}")
        sample_id, query = line["id"], line["query"]
        if not isinstance(sample_id, str) or not isinstance(query, str):
            raise ValueError("'id' and 'query' must be strings")
        kinds = [key for key in MASK_KEYS if key in line]
        if len(kinds) != 1:
            raise ValueError(f"sample {sample_id}: needs exactly one of {', '.join(MASK_KEYS)}, got {kinds}")
        kind, value = kinds[0], line[kinds[0]]
        try:
            if not isinstance(line["image"], str):
                raise ValueError(f"'image' must be a path string, got {line['image']!r}")
            image_path = base / line["image"]
            size = image_info(image_path).size
            if kind == "mask_rle":
                if not isinstance(value, dict) or not isinstance(value.get("counts"), str):
                    raise ValueError(
                        "mask_rle must be {'size': [h, w], 'counts': <COCO compressed RLE string>}"
                    )
                check_rle(value, size[1], size[0], "mask_rle")
            elif kind == "polygons":
                if not isinstance(value, list):
                    raise ValueError("'polygons' must be a list of [[x, y], ...] polygons")
                for polygon in value:
                    polygon_array(polygon)
            else:
                if not isinstance(value, str):
                    raise ValueError(f"'mask_png' must be a path string, got {value!r}")
                value = folder / value
                check_mask_png(image_info(value), size, value)
            box = None if line.get("box") is None else check_box(line["box"], size)
            points = None if line.get("points") is None else check_points(line["points"], size)
            meta = line.get("meta") or {}
            if not isinstance(meta, dict):
                raise ValueError("'meta' must be an object")
        except KeyError as err:
            raise ValueError(f"sample {sample_id}: missing key {err}") from err
        except (FileNotFoundError, ValueError, TypeError) as err:
            raise type(err)(f"sample {sample_id}: {err}") from err
        return _Record(
            id=sample_id,
            query=query,
            image_path=image_path,
            size=size,
            mask_kind=kind,
            mask_value=value,
            box=box,
            points=points,
            meta={**meta, "source": where},
        )

    def where(self, index: int) -> str:
        item = self.items[index]
        return f"{item.meta['source']}: sample {item.id}"

    def _mask(self, item: _Record) -> np.ndarray:
        width, height = item.size
        if item.mask_kind == "mask_rle":
            return decode_rle(item.mask_value).astype(np.uint8)
        if item.mask_kind == "polygons":
            return paint_polygons([(polygon, 1) for polygon in item.mask_value], height, width)
        mask = png_mask(item.mask_value)
        if mask.shape != (height, width):
            raise ValueError(f"mask PNG {item.mask_value} is {mask.shape[::-1]}, the image {item.size}")
        return mask

    def read(self, index: int) -> SegSample:
        item = self.items[index]
        image = load_image(item.image_path)
        if image.size != item.size:
            raise ValueError(f"image {item.image_path} decodes to {image.size}, its header said {item.size}")
        mask = self._mask(item)
        return annotated_sample(
            item.id, item.query, mask, image, item.image_path, dict(item.meta), item.box, item.points
        )


class JsonlSegDataModule(SegDataModule):
    """DataModule over JSONL files (docs/data.md); a stage whose file is None is unused.

    The loader options (batch_size, eval_batch_size, num_workers, seed, on_error) are `SegDataModule`'s.

    Args:
        path: the training file (e.g. the `train.jsonl` that `samr1 prepare refcocog-subset` writes).
        val_path: the validation file.
        test_path: the file `samr1 test` evaluates.
        image_root: folder the lines' `image` paths are relative to (default: each file's folder).
    """

    def __init__(
        self,
        path: str | None = "data/samr1_refcocog_3k/train.jsonl",
        val_path: str | None = None,
        test_path: str | None = None,
        image_root: str | None = None,
        **loader,
    ) -> None:
        self.paths = {"train": path, "val": val_path, "test": test_path}
        super().__init__(
            train_split="train" if path else None,
            val_split="val" if val_path else None,
            test_split="test" if test_path else None,
            **loader,
        )
        self.image_root = image_root

    def build_dataset(self, split: str) -> JsonlSegDataset:
        return JsonlSegDataset(self.paths[split], self.image_root, on_error=self.on_error)  # type: ignore[arg-type]
