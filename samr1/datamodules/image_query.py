"""Your own images and queries, for `samr1 predict` (no masks: the policy answers, SAM segments).

    samr1 predict --config configs/predict.yaml --data.image my.jpg --data.query "the red car"

`image`/`query` give one pair; `images`/`queries` give more (appended after `image`/`query`). One query is
asked of every image, one image is asked every query, otherwise the i-th query goes with the i-th image.
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from samr1.datamodules.base import ListDataset, SegDataModule, image_size
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


class ImageQueryDataModule(SegDataModule):
    """Samples built from image files and free-text queries, for `predict` (and `test`, without metrics).

    Ids are the images' file stems, made unique with a `_<index>` suffix when stems repeat. A missing or
    unreadable image fails at construction, naming its path.
    """

    def __init__(
        self,
        image: str | None = None,
        query: str | None = None,
        images: list[str] | None = None,
        queries: list[str] | None = None,
        batch_size: int = 1,
        eval_batch_size: int = 1,
        num_workers: int = 0,
    ) -> None:
        super().__init__(
            train_split=None,
            val_split=None,
            test_split="predict",
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
        )
        paths = ([image] if image is not None else []) + list(images or [])
        texts = ([query] if query is not None else []) + list(queries or [])
        self.pairs = pair_images_queries(paths, texts)
        for path, _ in self.pairs:
            image_size(Path(path))  # FileNotFoundError / ValueError naming the path
        stems = [Path(path).stem for path, _ in self.pairs]
        unique = len(set(stems)) == len(stems)
        self.ids = stems if unique else [f"{stem}_{i}" for i, stem in enumerate(stems)]

    def samples(self) -> list[SegSample]:
        return [
            SegSample(id=sid, query=query, image_path=str(path))
            for sid, (path, query) in zip(self.ids, self.pairs)
        ]

    def build_dataset(self, split: str) -> Dataset:
        return ListDataset([lambda s=s: s for s in self.samples()])
