"""SocioSeg (SocioReasoner, arXiv 2601.10477): urban socio-semantic segmentation of satellite tiles.

Each example is a satellite image, a rendered digital map of the same tile, a query (`problem`) and a pixel mask
of every socially defined entity it names (all the schools of the tile, say). Two layouts are read:

- the raw release: `<root>/<split>/<id>/sat.png, map.png, mask.png, question.json` (query under "problem");
- the Hugging Face copy (`vvangfaye/SocioSeg`) saved locally as parquet, columns `id`, `problem`,
  `sat_image`, `map_image`, `mask_label` (images as PNG bytes or `{"bytes", "path"}` structs, the `Image`
  feature's storage). Files are found, first match wins, at `<root>/data/<split>-<shard>.parquet`,
  `<root>/<split>/*.parquet`, `<root>/<split>.parquet`, `<root>/<split>-<shard>.parquet` (`<shard>`: the
  Hub's `00000-of-00001` numbering; split "val" also matches "validation"). Any split name works in both
  layouts (an out-of-distribution split such as "ood"). Nothing touches the network.

Masks: any non-zero pixel of the mask image is target (any colour channel; alpha ignored). The satellite image is
what SAM segments and what the mask refers to; the map is shown to the model first when `images="map+satellite"`
(`meta["extra_images"]`, read by the PromptBuilder). The task level (socio-name / socio-class / socio-semantic)
goes to `meta["group"]` so metrics are reported per level; see docs/socioseg.md for where it is read from.
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from samr1.datamodules.base import OnError, SegDataModule
from samr1.datamodules.masks import annotated_sample, component_boxes
from samr1.datamodules.reading import BadSampleLog, SampleDataset, report_bad, require_path
from samr1.images import image_size, load_image, open_image
from samr1.sample import SegSample

log = logging.getLogger(__name__)

LEVELS = ("socio-name", "socio-class", "socio-semantic")
# question.json keys and parquet columns the level is read from, first usable value wins.
LEVEL_KEYS = ("level", "task_level", "task", "type", "category")
RAW_FILES = ("sat.png", "map.png", "mask.png", "question.json")
PARQUET_COLUMNS = ("id", "problem", "sat_image", "map_image", "mask_label")
IMAGE_COLUMNS = ("sat_image", "map_image", "mask_label")

ImagesMode = Literal["satellite", "map+satellite"]
Layout = Literal["auto", "raw", "parquet"]

_LEVEL_WORDS = {
    "name": "socio-name",
    "names": "socio-name",
    "class": "socio-class",
    "classes": "socio-class",
    "semantic": "socio-semantic",
    "semantics": "socio-semantic",
}
_WORD = r"(names?|class(?:es)?|semantics?)"
_ID_SOCIO = re.compile(rf"(?:^|[-./])socio-?{_WORD}(?=[-./]|\d|$)")
_ID_PREFIX = re.compile(rf"^{_WORD}(?=[-./]|\d)")


def normalise_level(value: Any) -> str | None:
    """A level name as LEVELS spells it ("Socio-Name", "socio_names", "name" -> "socio-name"); None if
    `value` is not one."""
    if not isinstance(value, str):
        return None
    text = re.sub(r"[\s_]+", "-", value.strip().lower())
    text = text.removeprefix("socio-").removeprefix("socio")
    return _LEVEL_WORDS.get(text)


def level_from_id(sample_id: str) -> str | None:
    """The level an id carries: a "socio-<level>" token anywhere ("beijing_socio-name_12") or a bare level
    word at its start followed by a separator or digit ("class_0042"); None otherwise."""
    text = sample_id.strip().lower().replace("_", "-")
    match = _ID_SOCIO.search(text) or _ID_PREFIX.match(text)
    return _LEVEL_WORDS[match.group(1)] if match else None


def level_from_record(record: dict[str, Any]) -> str | None:
    """The level of a question.json object or a parquet row: the first of LEVEL_KEYS whose value is one."""
    for key in LEVEL_KEYS:
        level = normalise_level(record.get(key))
        if level is not None:
            return level
    return None


def read_levels_csv(path: str | Path) -> dict[str, str]:
    """id -> level from a CSV with a header row naming columns `id` and `level` (other columns ignored)."""
    path = require_path(Path(path), "SocioSeg levels CSV")
    levels: dict[str, str] = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("id", "level") if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: the header must name columns 'id' and 'level'; missing {missing}")
        for line, row in enumerate(reader, start=2):
            level = normalise_level(row["level"])
            if level is None:
                raise ValueError(f"{path}:{line}: unknown level {row['level']!r}; expected one of {LEVELS}")
            levels[str(row["id"]).strip()] = level
    return levels


def target_of_mask_image(image: Image.Image) -> np.ndarray:
    """Boolean target of a mask image: any non-zero value in any colour channel (alpha is ignored)."""
    if image.mode in ("1", "L", "I", "I;16", "F"):
        return np.asarray(image) != 0
    if image.mode == "LA":
        return np.asarray(image)[..., 0] != 0
    return np.asarray(image.convert("RGB")).any(axis=-1)


def _header_size(source: Path | bytes) -> tuple[int, int]:
    return image_size(source, None if isinstance(source, Path) else "image bytes")


def image_source(value: Any, column: str, folder: Path) -> Path | bytes:
    """The PNG bytes or file of a parquet image cell: raw bytes, an `Image` feature struct
    {"bytes": ..., "path": ...} (bytes first; a path alone is resolved against the parquet file's folder), or
    a path string. ValueError for an empty cell."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return bytes(value["bytes"])
        value = value.get("path")
    if isinstance(value, str) and value:
        path = Path(value) if Path(value).is_absolute() else folder / value
        if not path.is_file():
            raise FileNotFoundError(f"column {column!r}: image file not found: {path}")
        return path
    raise ValueError(f"column {column!r} holds no image ({type(value).__name__})")


def parquet_files(root: Path, split: str) -> list[Path]:
    """The parquet files of `split` under `root` (module doc: the patterns, first match wins).

    A shard's suffix must be the Hub's numbering (`-00000-of-00002`), so split "test" never takes the files
    of a split named "test-ood"; the split name is matched literally (glob characters escaped).
    """
    names = [split, "validation"] if split == "val" else [split]
    for name in names:
        literal = glob.escape(name)
        shard = re.compile(rf"{re.escape(name)}-\d+(?:-of-\d+)?\.parquet")
        for pattern, sharded in (
            (f"data/{literal}-*.parquet", True),
            (f"{literal}/*.parquet", False),
            (f"{literal}.parquet", False),
            (f"{literal}-*.parquet", True),
        ):
            found = sorted(p for p in root.glob(pattern) if not sharded or shard.fullmatch(p.name))
            if found:
                return found
    return []


@dataclass(frozen=True)
class _Example:
    id: str
    query: str
    level: str | None
    source: str  # the example's folder, or "<file>:<row>"
    paths: dict[str, Path] | None = None  # raw layout: sat / map / mask files
    location: tuple[Path, int, int] | None = None  # parquet: (file, row group, row in group)


class SocioSegDataset(SampleDataset):
    """One SocioSeg split from the raw release or the local parquet copy (`layout`: "auto" picks parquet if
    files match the module doc's patterns, else the raw `<root>/<split>/` folder).

    Samples, in id order (raw) or file and row order (parquet): `query` is the example's "problem"; `image` the
    satellite image (`image_path` its file in the raw layout); `mask` 1 where the mask image is non-zero;
    `box` the tight box of all target pixels; `points` the two largest inscribed circles' centres.
    meta: `gt_boxes` (a box per 8-connected component of at least `min_component_area` pixels, original
    pixels, sorted by top then left: the objects MultiObjectMatchReward matches), `num_objects`, `split`,
    `source`, and `level` and `group` when the level is known (from `levels_csv`, then question.json or a
    parquet column, then the id). With `images="map+satellite"`, `meta["extra_images"] = [map]` so the model
    sees the map first, then the satellite image.

    Every example must have all four files (raw) or all five columns (parquet), a non-empty string query and a
    mask the size of the satellite image; a broken one is reported with its folder (or file:row) and id and
    follows `on_error`. A parquet file without a required column is an error naming file and column.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "test",
        images: ImagesMode = "satellite",
        layout: Layout = "auto",
        levels_csv: str | Path | None = None,
        min_component_area: int = 1,
        on_error: OnError = "error",
    ) -> None:
        if images not in ("satellite", "map+satellite"):
            raise ValueError(f"images must be 'satellite' or 'map+satellite', got {images!r}")
        if layout not in ("auto", "raw", "parquet"):
            raise ValueError(f"layout must be 'auto', 'raw' or 'parquet', got {layout!r}")
        self.root = require_path(Path(root), "SocioSeg root")
        self.split = split
        self.images = images
        self.min_component_area = int(min_component_area)
        self.name = f"SocioSeg {split}"
        self.bad = BadSampleLog(on_error, self.name)
        self.levels = read_levels_csv(levels_csv) if levels_csv is not None else {}
        files = parquet_files(self.root, split) if layout in ("auto", "parquet") else []
        if layout == "parquet" and not files:
            raise FileNotFoundError(
                f"no parquet files for split {split!r} under {self.root} (looked for "
                f"data/{split}-<shard>.parquet, {split}/*.parquet, {split}.parquet, {split}-<shard>.parquet)"
            )
        self.layout = "parquet" if files else "raw"
        self.items: list[_Example] = []
        if files:
            for path in files:
                self._scan_parquet(path)
        else:
            self._scan_raw(require_path(self.root / split, f"SocioSeg {split} folder"))
        self._cache: tuple[Path, int, list[dict[str, Any]]] | None = None
        self.bad.summary(len(self.items), "examples")

    # ------------------------------------------------------------------ scanning
    def _level(self, sample_id: str, record: dict[str, Any]) -> str | None:
        return self.levels.get(sample_id) or level_from_record(record) or level_from_id(sample_id)

    def _scan_raw(self, folder: Path) -> None:
        for example in sorted(p for p in folder.iterdir() if p.is_dir()):
            where = f"example {example.name} ({example})"
            try:
                missing = [name for name in RAW_FILES if not (example / name).is_file()]
                if missing:
                    raise FileNotFoundError(
                        f"incomplete example directory {example}: missing {', '.join(missing)}"
                    )
                question = json.loads((example / "question.json").read_text(encoding="utf-8-sig"))
                if not isinstance(question, dict):
                    raise ValueError("question.json must hold a JSON object")
                query = _query(question.get("problem"), "question.json")
                paths = {"sat": example / "sat.png", "map": example / "map.png", "mask": example / "mask.png"}
                _check_sizes({key: paths[key] for key in ("sat", "map", "mask")})
            except (FileNotFoundError, ValueError, TypeError) as err:
                report_bad(self.bad, err, where)
                continue
            self.items.append(
                _Example(
                    id=example.name,
                    query=query,
                    level=self._level(example.name, question),
                    source=str(example),
                    paths=paths,
                )
            )

    def _scan_parquet(self, path: Path) -> None:
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(path)
        names = parquet.schema_arrow.names
        for column in PARQUET_COLUMNS:
            if column not in names:
                raise ValueError(
                    f"{path}: missing column {column!r} (SocioSeg parquet needs {PARQUET_COLUMNS})"
                )
        level_columns = [c for c in LEVEL_KEYS if c in names]
        seen = {item.id for item in self.items}
        row = 0
        for group in range(parquet.num_row_groups):
            rows = parquet.read_row_group(group, columns=[*PARQUET_COLUMNS, *level_columns]).to_pylist()
            for index, record in enumerate(rows):
                where = f"{path}:{row} (id {record.get('id')})"
                row += 1
                try:
                    sample_id = record["id"]
                    if isinstance(sample_id, int) and not isinstance(sample_id, bool):
                        sample_id = str(sample_id)
                    if not isinstance(sample_id, str) or not sample_id:
                        raise ValueError(f"column 'id' must be a non-empty string, got {sample_id!r}")
                    if sample_id in seen:
                        raise ValueError(f"duplicate id {sample_id!r}")
                    query = _query(record["problem"], "column 'problem'")
                    sources = {
                        key: image_source(record[column], column, path.parent)
                        for key, column in zip(("sat", "map", "mask"), IMAGE_COLUMNS)
                    }
                    _check_sizes(sources)
                except (FileNotFoundError, ValueError, TypeError) as err:
                    report_bad(self.bad, err, where)
                    continue
                seen.add(sample_id)
                self.items.append(
                    _Example(
                        id=sample_id,
                        query=query,
                        level=self._level(sample_id, record),
                        source=f"{path}:{row - 1}",
                        location=(path, group, index),
                    )
                )

    # ------------------------------------------------------------------ reading
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_cache"] = None  # loader workers re-read their own row groups
        return state

    def _sources(self, item: _Example) -> dict[str, Path | bytes]:
        if item.paths is not None:
            return dict(item.paths)
        path, group, index = item.location  # type: ignore[misc]
        if self._cache is None or self._cache[:2] != (path, group):
            import pyarrow.parquet as pq

            rows = pq.ParquetFile(path).read_row_group(group, columns=list(IMAGE_COLUMNS)).to_pylist()
            self._cache = (path, group, rows)
        record = self._cache[2][index]
        return {
            key: image_source(record[column], column, path.parent)
            for key, column in zip(("sat", "map", "mask"), IMAGE_COLUMNS)
        }

    def where(self, index: int) -> str:
        item = self.items[index]
        return f"{item.source}: sample {item.id}"

    def read(self, index: int) -> SegSample:
        item = self.items[index]
        sources = self._sources(item)
        names = {
            key: None if isinstance(src, Path) else f"{item.source} {key}" for key, src in sources.items()
        }
        satellite = load_image(sources["sat"], names["sat"])
        target = target_of_mask_image(open_image(sources["mask"], names["mask"]))
        if target.shape != (satellite.height, satellite.width):
            raise ValueError(f"the mask is {target.shape[::-1]}, the satellite image {satellite.size}")
        extra = [load_image(sources["map"], names["map"])] if self.images == "map+satellite" else []
        boxes = component_boxes(target, self.min_component_area)
        meta: dict[str, Any] = {
            "gt_boxes": [list(box) for box in boxes],
            "num_objects": len(boxes),
            "split": self.split,
            "source": item.source,
        }
        if item.level is not None:
            meta["level"] = meta["group"] = item.level
        if extra:
            meta["extra_images"] = extra
        sat_path = sources["sat"]
        path = sat_path if isinstance(sat_path, Path) else None
        return annotated_sample(item.id, item.query, target.astype(np.uint8), satellite, path, meta)


def _query(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: 'problem' must be a non-empty string, got {value!r:.80}")
    return value


def _check_sizes(sources: dict[str, Path | bytes]) -> None:
    """Reads each image's header; the mask must have the satellite image's size."""
    sizes = {key: _header_size(source) for key, source in sources.items()}
    if sizes["mask"] != sizes["sat"]:
        raise ValueError(f"the mask is {sizes['mask']}, the satellite image {sizes['sat']}")


class SocioSegDataModule(SegDataModule):
    """SocioSeg DataModule (see `SocioSegDataset`).

    The loader options (splits, batch_size, eval_batch_size, num_workers, seed, on_error) are `SegDataModule`'s.

    Args:
        root: the SocioSeg folder (raw release or local parquet copy).
        images: "satellite" (one image, the setting SAM-R1 was evaluated in) or "map+satellite" (the map
            first, then the satellite image, which SAM segments).
        layout: "auto", "raw" or "parquet" (auto: parquet when its files are found).
        levels_csv: optional CSV (`id,level`) giving the task level where the files do not carry it.
        min_component_area: smallest 8-connected mask component (pixels) counted as an object.
    """

    def __init__(
        self,
        root: str = "data/SocioSeg",
        images: ImagesMode = "satellite",
        layout: Layout = "auto",
        levels_csv: str | None = None,
        min_component_area: int = 1,
        **loader,
    ) -> None:
        super().__init__(**loader)
        if images not in ("satellite", "map+satellite"):
            raise ValueError(f"images must be 'satellite' or 'map+satellite', got {images!r}")
        self.root = root
        self.images = images
        self.layout = layout
        self.levels_csv = levels_csv
        self.min_component_area = min_component_area

    def build_dataset(self, split: str) -> SocioSegDataset:
        return SocioSegDataset(
            self.root,
            split,
            images=self.images,
            layout=self.layout,
            levels_csv=self.levels_csv,
            min_component_area=self.min_component_area,
            on_error=self.on_error,
        )
