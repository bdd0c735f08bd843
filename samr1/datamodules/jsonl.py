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
from PIL import Image
from torch.utils.data import Dataset

from samr1.datamodules.base import BadSampleLog, OnError, SegDataModule, image_size, report_bad, require_path
from samr1.datamodules.masks import (
    decode_rle,
    inscribed_circle_points,
    paint_polygons,
    polygon_array,
    tight_box,
)
from samr1.sample import SegSample

log = logging.getLogger(__name__)

MASK_KEYS = ("mask_rle", "polygons", "mask_png")


@dataclass(frozen=True)
class _Record:
    id: str
    query: str
    image_path: Path
    size: tuple[int, int]  # (width, height) of the image
    mask_kind: str
    mask_value: Any  # the RLE dict, the polygon list, or the PNG's Path
    box: tuple[float, float, float, float] | None
    points: list[tuple[float, float]] | None
    meta: dict[str, Any]


def png_mask(path: Path) -> np.ndarray:
    """uint8 mask of a single-channel PNG: 255 stays 255 (ignored), any other non-zero value becomes 1."""
    with Image.open(path) as image:
        # Mode "1" reads as bool: True is target (convert("L") would turn it into 255, i.e. ignored).
        values = np.array(image).astype(np.uint8) if image.mode == "1" else np.array(image)
    if values.ndim != 2:
        raise ValueError(f"mask PNG {path} must have one channel (mode L, P or 1), got mode {image.mode}")
    mask = (values != 0).astype(np.uint8)
    mask[values == 255] = 255
    return mask


def _box(value: Any) -> tuple[float, float, float, float] | None:
    if value is None:
        return None
    box = tuple(float(v) for v in value)
    if len(box) != 4 or box[2] < box[0] or box[3] < box[1]:
        raise ValueError(f"'box' must be [x1, y1, x2, y2] with x1 <= x2, y1 <= y2, got {value!r}")
    return box  # type: ignore[return-value]


def _points(value: Any) -> list[tuple[float, float]] | None:
    if value is None:
        return None
    points = [(float(x), float(y)) for x, y in value]
    if not points:
        raise ValueError("'points' must be a non-empty list of [x, y]")
    return points


class JsonlSegDataset(Dataset):
    """Samples of one JSONL file, in line order; blank lines are ignored.

    Masks: `mask_rle` is the target (it cannot carry ignored pixels); `polygons` are target polygons,
    rasterised as LISA does (int32-truncated points, outline + fill) at the image's size; `mask_png` is read as
    non-zero = target and 255 = ignored. `box` and `points` default to the mask's tight box and the centres of
    its two largest inscribed circles. meta: the line's `meta` plus `source` ("<file>:<line>").
    Missing JSONL file: FileNotFoundError at construction. A malformed line, duplicate id, or missing or
    unreadable image or mask PNG is reported as "<file>:<line>" with the id and follows `on_error`.
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
        with open(self.path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"{self.path}:{number}"
                try:
                    record = self._record(json.loads(line), base, self.path.parent, where)
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
        if self.bad.skipped:
            log.warning("%s: skipped %d lines; kept %d", self.name, len(self.bad.skipped), len(self.items))

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
            image_path = base / line["image"]
            size = image_size(image_path)
            if kind == "mask_rle":
                if [int(v) for v in value["size"]] != [size[1], size[0]]:
                    raise ValueError(
                        f"mask_rle size {value['size']} differs from the image's [h, w] {size[::-1]}"
                    )
                if not isinstance(value["counts"], str):
                    raise ValueError("mask_rle 'counts' must be a COCO compressed RLE string")
            elif kind == "polygons":
                if not isinstance(value, list):
                    raise ValueError("'polygons' must be a list of [[x, y], ...] polygons")
                for polygon in value:
                    polygon_array(polygon)
            else:
                value = folder / value
                mask_size = image_size(value)
                if mask_size != size:
                    raise ValueError(f"mask PNG {value} is {mask_size}, the image {size}")
            box, points = _box(line.get("box")), _points(line.get("points"))
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

    @property
    def skipped(self) -> list[str]:
        """One message per line dropped under `on_error="skip"`."""
        return self.bad.skipped

    def __len__(self) -> int:
        return len(self.items)

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

    def __getitem__(self, index: int) -> SegSample:
        item = self.items[index]
        try:
            mask = self._mask(item)
        except (OSError, ValueError) as err:
            raise ValueError(f"{item.meta['source']}: sample {item.id}: {err}") from err
        target = mask == 1
        return SegSample(
            id=item.id,
            query=item.query,
            mask=mask,
            image_path=str(item.image_path),
            box=item.box if item.box is not None else tight_box(target),
            points=item.points if item.points is not None else inscribed_circle_points(target),
            meta=dict(item.meta),
        )


class JsonlSegDataModule(SegDataModule):
    """DataModule over JSONL files: `path` is the training file (e.g. the `train.jsonl` that
    `samr1 prepare refcocog-subset` writes), `val_path` and `test_path` the optional evaluation files; a stage
    whose file is None is unused. Images resolve against `image_root` or each file's folder."""

    def __init__(
        self,
        path: str | None = "data/samr1_refcocog_3k/train.jsonl",
        val_path: str | None = None,
        test_path: str | None = None,
        image_root: str | None = None,
        batch_size: int = 2,
        eval_batch_size: int = 4,
        num_workers: int = 0,
        seed: int = 0,
        on_error: OnError = "error",
    ) -> None:
        self.paths = {"train": path, "val": val_path, "test": test_path}
        super().__init__(
            train_split="train" if path else None,
            val_split="val" if val_path else None,
            test_split="test" if test_path else None,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            seed=seed,
            on_error=on_error,
        )
        self.image_root = image_root

    def build_dataset(self, split: str) -> JsonlSegDataset:
        return JsonlSegDataset(self.paths[split], self.image_root, on_error=self.on_error)  # type: ignore[arg-type]
