"""What every samr1 DataModule shares: loaders of `SegSample` lists and the bad-sample policy.

Batches are plain lists of `SegSample`; the policy module turns them into prompts with its own processor,
so a DataModule never depends on which model reads it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import lightning as L
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from samr1.datamodules.samplers import EvalSampler, ResumableSampler
from samr1.sample import SegSample

log = logging.getLogger(__name__)

OnError = Literal["error", "skip"]


def collate_samples(samples: Sequence[SegSample]) -> list[SegSample]:
    """Batches stay lists of samples: images differ in size and prompts are built by the policy."""
    return list(samples)


class SampleError(ValueError):
    """A broken sample: the message names its file and id."""


class BadSampleLog:
    """Counts and reports samples dropped under `on_error="skip"`; raises under `on_error="error"`."""

    def __init__(self, on_error: OnError, dataset: str) -> None:
        if on_error not in ("error", "skip"):
            raise ValueError(f"on_error must be 'error' or 'skip', got {on_error!r}")
        self.on_error = on_error
        self.dataset = dataset
        self.skipped: list[str] = []

    def handle(self, err: Exception, where: str) -> None:
        message = f"{self.dataset}: {where}: {err}"
        if self.on_error == "error":
            raise SampleError(message) from err
        self.skipped.append(message)
        log.warning("skipping broken sample (%d so far): %s", len(self.skipped), message)


class SegDataModule(L.LightningDataModule):
    """Base of the per-benchmark DataModules: subclasses implement `build_dataset(split)`.

    `train_split`, `val_split`, `test_split` name the splits each stage reads (None: the stage is unused).
    """

    def __init__(
        self,
        train_split: str | None = "train",
        val_split: str | None = "val",
        test_split: str | None = "test",
        batch_size: int = 2,
        eval_batch_size: int = 4,
        num_workers: int = 0,
        seed: int = 0,
        on_error: OnError = "error",
    ) -> None:
        super().__init__()
        self.train_split, self.val_split, self.test_split = train_split, val_split, test_split
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.on_error = on_error
        self.datasets: dict[str, Dataset] = {}

    def build_dataset(self, split: str) -> Dataset:
        raise NotImplementedError

    def dataset(self, split: str) -> Dataset:
        if split not in self.datasets:
            self.datasets[split] = self.build_dataset(split)
        return self.datasets[split]

    def setup(self, stage: str) -> None:
        splits = {
            "fit": [self.train_split, self.val_split],
            "validate": [self.val_split],
            "test": [self.test_split],
            "predict": [self.test_split],
        }[stage]
        for split in splits:
            if split is not None:
                self.dataset(split)

    def _loader(self, split: str | None, batch_size: int, shuffle: bool) -> DataLoader | list:
        if split is None:
            return []
        dataset = self.dataset(split)
        if shuffle:
            sampler = ResumableSampler(dataset, seed=self.seed)
            consumed = self._consumed_batches()
            if consumed < -(-len(sampler) // batch_size):  # a checkpoint at an epoch's end starts a new one
                sampler.skip(consumed * batch_size)
        else:
            sampler = EvalSampler(dataset)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate_samples,
            persistent_workers=self.num_workers > 0,
        )

    def _consumed_batches(self) -> int:
        """Training batches a resumed run already trained on in its current epoch (0 on a fresh start).

        Read from the restored loop progress before the loop resets it: `processed` counts a batch whose
        end-of-batch checkpoint was written, which Lightning then marks completed and does not repeat.
        """
        trainer = self.trainer
        if trainer is None:
            return 0
        return int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)

    def train_dataloader(self):
        return self._loader(self.train_split, self.batch_size, shuffle=True)

    def val_dataloader(self):
        return self._loader(self.val_split, self.eval_batch_size, shuffle=False)

    def test_dataloader(self):
        return self._loader(self.test_split, self.eval_batch_size, shuffle=False)

    def predict_dataloader(self):
        return self._loader(self.test_split, self.eval_batch_size, shuffle=False)


class ListDataset(Dataset):
    """A map-style dataset over a list of sample factories (built lazily so workers decode images)."""

    def __init__(self, items: Sequence[Callable[[], SegSample]]) -> None:
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> SegSample:
        return self.items[index]()


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the image file's header: FileNotFoundError naming a missing file, ValueError for
    one PIL cannot identify. Only the header is read: decoding every image would make setup as slow as an
    epoch (a truncated file still fails later, when the image is loaded)."""
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err


def report_bad(bad: BadSampleLog, err: Exception, where: str) -> None:
    """`bad.handle(err, where)`, except that under "error" a missing file stays a FileNotFoundError (naming
    the path), so callers and users see the usual exception for a file that is not there."""
    if isinstance(err, FileNotFoundError) and bad.on_error == "error":
        raise FileNotFoundError(f"{bad.dataset}: {where}: {err}") from err
    bad.handle(err, where)


def require_path(path: Path, what: str) -> Path:
    """`path` if it exists; FileNotFoundError naming it otherwise (a dataset's root, split folder, index)."""
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path
