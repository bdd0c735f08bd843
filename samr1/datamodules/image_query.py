"""Your own images and queries, for `samr1 predict` (no masks: the policy answers, SAM segments).

    samr1 predict --config configs/predict.yaml --data.image my.jpg --data.query "the red car"

`image`/`query` give one pair; `images`/`queries` give more (appended after `image`/`query`). One query is
asked of every image, one image is asked every query, otherwise the i-th query goes with the i-th image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from samr1.datamodules.base import OnError, SegDataModule
from samr1.datamodules.reading import BadSampleLog, SampleDataset, report_bad
from samr1.images import image_size, load_image
from samr1.sample import SegSample


def pair_images_queries(images: list[str], queries: list[str]) -> list[tuple[str, str]]:
    """(image, query) pairs: one query broadcast to every image, one image to every query, else zipped."""
    if not images or not queries:
        raise ValueError(
            "give at least one image and one query (data.image / data.query or data.images / data.queries)"
        )
    if len(queries) == 1:
        return [(image, queries[0]) for image in images]
    if len(images) == 1:
        return [(images[0], query) for query in queries]
    if len(images) != len(queries):
        raise ValueError(
            f"{len(images)} images and {len(queries)} queries: give one query, one image, or as many of each"
        )
    return list(zip(images, queries))


@dataclass(frozen=True)
class _Pair:
    id: str
    path: str
    query: str


class ImageQueryDataset(SampleDataset):
    """(id, image path, query) triples as samples without masks; images are read with
    `samr1.images.load_image` (EXIF orientation applied, every mode scaled to RGB), like every dataset's.
    Each image's header is checked at construction: a missing or unreadable one follows `on_error`."""

    def __init__(self, triples: list[tuple[str, str, str]], on_error: OnError = "error") -> None:
        self.name = "predict images"
        self.bad = BadSampleLog(on_error, self.name)
        self.items: list[_Pair] = []
        for sample_id, path, query in triples:
            try:
                image_size(Path(path))
            except (FileNotFoundError, ValueError) as err:
                report_bad(self.bad, err, f"sample {sample_id}")
                continue
            self.items.append(_Pair(sample_id, path, query))
        self.bad.summary(len(self.items), "images")

    def where(self, index: int) -> str:
        item = self.items[index]
        return f"sample {item.id} ({item.path})"

    def read(self, index: int) -> SegSample:
        item = self.items[index]
        return SegSample(
            id=item.id, query=item.query, image=load_image(Path(item.path)), image_path=item.path
        )


class ImageQueryDataModule(SegDataModule):
    """Samples built from image files and free-text queries, for `predict` (and `test`, without metrics).

    Ids are the images' file stems, made unique with a `_<index>` suffix when stems repeat. A missing or
    unreadable image fails at construction, naming its path (`on_error: skip` leaves it out instead). The
    other loader options (num_workers, seed, on_error) are `SegDataModule`'s.

    Args:
        image: one image file.
        query: one query (asked of every image when it is the only one).
        images: more image files, after `image`.
        queries: more queries, after `query`.
        batch_size: prompts per step in `fit` (unused by predict).
        eval_batch_size: images per step in predict and test.
    """

    def __init__(
        self,
        image: str | None = None,
        query: str | None = None,
        images: list[str] | None = None,
        queries: list[str] | None = None,
        batch_size: int = 1,
        eval_batch_size: int = 1,
        **loader,
    ) -> None:
        super().__init__(
            train_split=None,
            val_split=None,
            test_split="predict",
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            **loader,
        )
        paths = ([image] if image is not None else []) + list(images or [])
        texts = ([query] if query is not None else []) + list(queries or [])
        self.pairs = pair_images_queries(paths, texts)
        stems = [Path(path).stem for path, _ in self.pairs]
        unique = len(set(stems)) == len(stems)
        self.ids = stems if unique else [f"{stem}_{i}" for i, stem in enumerate(stems)]
        triples = [(sid, path, query) for sid, (path, query) in zip(self.ids, self.pairs)]
        self.datasets["predict"] = ImageQueryDataset(triples, on_error=self.on_error)

    def samples(self) -> list[SegSample]:
        """The samples, images not yet read (`image_path` only), in order."""
        return [
            SegSample(id=item.id, query=item.query, image_path=item.path)
            for item in self.datasets["predict"].items
        ]

    def build_dataset(self, split: str) -> ImageQueryDataset:
        return self.datasets["predict"]  # built (and its images checked) at construction
