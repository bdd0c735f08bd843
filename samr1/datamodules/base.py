"""What every samr1 DataModule shares: loaders of `SegSample` batches, the loader options, the bad-sample policy.

Batches are lists of `SegSample` (`SampleBatch`, which also carries the samples that could not be read); the
policy module turns them into prompts with its own processor, so a DataModule never depends on which model
reads it. How samples are read and what a broken one does is in `samr1.datamodules.reading`.
"""

from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader, Dataset

from samr1.datamodules.reading import (
    BadSampleLog,
    GuardedReads,
    ListDataset,
    OnError,
    ReadFailure,
    ReadFailureLog,
    SampleBatch,
    SampleDataset,
    SampleError,
    collate_reads,
    collate_samples,
    report_bad,
    require_path,
)
from samr1.datamodules.samplers import EvalSampler, ResumableSampler
from samr1.images import image_size


class SegDataModule(L.LightningDataModule):
    """Base of the per-benchmark DataModules, and the one place their loader options are declared.

    Subclasses implement `build_dataset(split)` and forward their other arguments here (`**loader`):
    jsonargparse follows the forwarding, so `--help` and `--print_config` show these options, typed and
    documented, under every DataModule.

    Args:
        train_split: split the fit stage trains on (None: no training data).
        val_split: split validated on during fit and by `samr1 validate` (None: no validation).
        test_split: split `samr1 test` and `samr1 predict` read (None: unused).
        batch_size: training prompts per process and step (each gets `group_size` completions).
        eval_batch_size: prompts per process and step in validation, test and predict.
        num_workers: DataLoader worker processes that read and decode samples (0: in the main process).
        seed: seed of the training shuffle (the same seed gives the same order, and exact resume).
        on_error: what a broken sample does, at set-up and when it is read: "error" stops with a message
            naming its file (and line) and id; "skip" leaves it out, logs it and counts it (docs/data.md).
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
        if on_error not in ("error", "skip"):
            raise ValueError(f"on_error must be 'error' or 'skip', got {on_error!r}")
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"data.{name} must be a positive integer, got {value!r}")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"data.num_workers must be a non-negative integer, got {num_workers!r}")
        self.train_split, self.val_split, self.test_split = train_split, val_split, test_split
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.on_error = on_error
        self.datasets: dict[str, Dataset] = {}
        self.read_failures = ReadFailureLog()

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
        # Training replaces an unreadable sample by the next readable one (batches keep their size, so
        # processes stay in step and resume stays exact); evaluation leaves it out and counts it.
        reads = GuardedReads(dataset, self.on_error, substitute=shuffle, split=split)
        if shuffle:
            sampler = ResumableSampler(reads, seed=self.seed)
            consumed = self._consumed_batches()
            if consumed < -(-len(sampler) // batch_size):  # a checkpoint at an epoch's end starts a new one
                sampler.skip(consumed * batch_size)
        else:
            sampler = EvalSampler(reads)
        return DataLoader(
            reads,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate_reads,
            persistent_workers=self.num_workers > 0,
        )

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        """Logs and counts (once each, in this process) the samples a batch's reads skipped."""
        if isinstance(batch, SampleBatch):
            for failure in batch.failures:
                dataset = self.datasets.get(failure.split)
                if self.read_failures.record(failure) and isinstance(dataset, SampleDataset):
                    dataset.bad.skipped.append(failure.message)
        return batch

    def transfer_batch_to_device(self, batch, device, dataloader_idx: int):
        """Samples stay on the CPU (PIL images, numpy masks: the policy builds its tensors from them). The
        default transfer would rebuild the list and lose `SampleBatch.failures`, which evaluation counts."""
        if isinstance(batch, SampleBatch):
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

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


__all__ = [
    "BadSampleLog",
    "GuardedReads",
    "ListDataset",
    "OnError",
    "ReadFailure",
    "ReadFailureLog",
    "SampleBatch",
    "SampleDataset",
    "SampleError",
    "SegDataModule",
    "collate_reads",
    "collate_samples",
    "image_size",
    "report_bad",
    "require_path",
]
