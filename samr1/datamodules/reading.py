"""How samples are read, and what a broken one does (`on_error`), at set-up and when it is read.

At set-up a dataset indexes its files and checks what is cheap to check (headers, encodings, annotations);
`BadSampleLog` raises (`on_error="error"`) or drops, logs and counts (`"skip"`) each broken sample. What only
decoding reveals (a truncated image, a corrupt mask file) fails when the sample is read: `SampleDataset`
raises a `SampleError` naming the dataset, the sample's file (and line) and id, and the DataLoader reads
through `GuardedReads`, which under "skip" turns that error into a `ReadFailure` carried by the batch
(`SampleBatch.failures`) so the main process can log and count it, and training goes on:

- training (`substitute=True`) reads the next readable sample in index order instead, so a batch keeps its
  size, every process takes the same number of steps, and a resumed run reads exactly what it would have;
- evaluation and predict (`substitute=False`) leave the sample out of its batch (no sample is read twice,
  none padded in) and the evaluation reports how many were left out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from torch.utils.data import Dataset

from samr1.sample import SegSample

log = logging.getLogger(__name__)

OnError = Literal["error", "skip"]

# What reading a sample raises when its files or annotation are broken (not a bug in samr1).
READ_ERRORS = (OSError, ValueError, TypeError, KeyError, SyntaxError, EOFError)


class SampleError(ValueError):
    """A broken sample: the message names its dataset, file (and line) and id."""

    def __init__(self, message: str, sample_id: str | None = None) -> None:
        super().__init__(message)
        self.sample_id = sample_id


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

    def summary(self, kept: int, unit: str) -> None:
        """One warning with the totals, when anything was skipped: "skipped 2 images; kept 14"."""
        if self.skipped:
            log.warning("%s: skipped %d %s; kept %d", self.dataset, len(self.skipped), unit, kept)


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


class SampleDataset(Dataset):
    """Base of the file-backed datasets. Subclasses set `name`, `bad` (their set-up `BadSampleLog`) and
    `items` (what set-up indexed, each with an `id`), and implement `read(index)` and `where(index)` (the
    sample's id and file, and line where it has one); `dataset[index]` raises a `SampleError` naming them
    when the sample cannot be read."""

    name: str
    bad: BadSampleLog
    items: list

    def read(self, index: int) -> SegSample:
        raise NotImplementedError

    def where(self, index: int) -> str:
        raise NotImplementedError

    def sample_id(self, index: int) -> str:
        return self.items[index].id

    def __len__(self) -> int:
        return len(self.items)

    @property
    def skipped(self) -> list[str]:
        """One message per sample left out under `on_error="skip"` (at set-up, and when read through a
        DataModule's loaders)."""
        return self.bad.skipped

    def __getitem__(self, index: int) -> SegSample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self.name}: index {index} out of range for {len(self)} samples")
        try:
            return self.read(index)
        except SampleError:
            raise
        except READ_ERRORS as err:
            message = f"{self.name}: {self.where(index)}: {err}"
            raise SampleError(message, self.sample_id(index)) from err


class ListDataset(Dataset):
    """A map-style dataset over a list of sample factories (built lazily so workers decode images)."""

    def __init__(self, items: Sequence[Callable[[], SegSample]]) -> None:
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> SegSample:
        return self.items[index]()


@dataclass(frozen=True)
class ReadFailure:
    """A sample that failed when read under `on_error="skip"`: which one, and why (the SampleError text)."""

    split: str
    index: int
    sample_id: str | None
    message: str
    replaced_by: int | None = None  # training: the index read in its place


class SampleBatch(list):
    """A batch: a plain list of `SegSample`, plus `failures`, the samples of this batch's indices that could
    not be read (left out, or in training replaced by the next readable one)."""

    def __init__(self, samples: Sequence[SegSample] = (), failures: Sequence[ReadFailure] = ()) -> None:
        super().__init__(samples)
        self.failures = list(failures)


class GuardedReads(Dataset):
    """`dataset[index]` with `on_error` applied at read time; items are `(sample or None, failures)`.

    `substitute=True`: a failed sample is replaced by the next readable one in index order (wrapping
    around), deterministically; when none is readable, a SampleError says so. `substitute=False`: the item
    is `(None, [failure])`. Under `on_error="error"` the SampleError propagates unchanged.
    """

    def __init__(self, dataset: Dataset, on_error: OnError, substitute: bool, split: str = "") -> None:
        if on_error not in ("error", "skip"):
            raise ValueError(f"on_error must be 'error' or 'skip', got {on_error!r}")
        self.dataset, self.on_error, self.substitute = dataset, on_error, substitute
        self.split = split

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[SegSample | None, list[ReadFailure]]:
        failed: list[tuple[int, SampleError]] = []
        size = len(self.dataset)
        for step in range(size if self.substitute else 1):
            current = (index + step) % size
            try:
                sample = self.dataset[current]
            except SampleError as err:
                if self.on_error == "error":
                    raise
                failed.append((current, err))
                continue
            return sample, self._failures(failed, current)
        if self.substitute:
            name = getattr(self.dataset, "name", type(self.dataset).__name__)
            raise SampleError(f"{name}: none of its {size} samples could be read; the first: {failed[0][1]}")
        return None, self._failures(failed, None)

    def _failures(self, failed: list[tuple[int, SampleError]], replaced_by: int | None) -> list[ReadFailure]:
        return [ReadFailure(self.split, index, err.sample_id, str(err), replaced_by) for index, err in failed]


def collate_reads(items: Sequence[tuple[SegSample | None, list[ReadFailure]]]) -> SampleBatch:
    """The DataLoader's collate over `GuardedReads` items: the read samples, and every failure."""
    return SampleBatch(
        [sample for sample, _ in items if sample is not None],
        [failure for _, failures in items for failure in failures],
    )


def collate_samples(samples: Sequence[SegSample]) -> list[SegSample]:
    """Batches stay lists of samples: images differ in size and prompts are built by the policy."""
    return list(samples)


class ReadFailureLog:
    """The read failures one process has seen, each logged and counted once (a training epoch that reads a
    broken sample again does not count it again), per split."""

    def __init__(self) -> None:
        self.by_split: dict[str, dict[int, ReadFailure]] = {}

    def record(self, failure: ReadFailure) -> bool:
        """True (and a warning logged) the first time this sample's failure is seen."""
        seen = self.by_split.setdefault(failure.split, {})
        if failure.index in seen:
            return False
        seen[failure.index] = failure
        then = "replaced by the next readable sample" if failure.replaced_by is not None else "left out"
        log.warning(
            "skipping a sample that could not be read (%d so far in %s; %s): %s",
            len(seen),
            failure.split or "this split",
            then,
            failure.message,
        )
        return True

    def count(self, split: str) -> int:
        return len(self.by_split.get(split, {}))

    def messages(self, split: str) -> list[str]:
        return [failure.message for failure in self.by_split.get(split, {}).values()]
