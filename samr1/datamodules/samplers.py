"""Samplers that make evaluation exact and resume exact.

`ResumableSampler`: a seeded per-epoch shuffle, sharded across processes like `DistributedSampler`, that can
skip the batches a resumed run already consumed in its epoch, so `fit --ckpt_path last` sees the same data
it would have seen uninterrupted.
`EvalSampler`: shards without padding, so no sample is counted twice in a distributed evaluation.
"""

from __future__ import annotations

import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler


def world() -> tuple[int, int]:
    """(number of processes, this process's rank); (1, 0) outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class ResumableSampler(DistributedSampler):
    """Seeded shuffle per epoch (`set_epoch`), sharded by rank; `skip(n)` drops the next iteration's first n."""

    def __init__(self, dataset: Dataset, seed: int = 0, shuffle: bool = True) -> None:
        replicas, rank = world()
        super().__init__(
            dataset, num_replicas=replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False
        )
        self._skip = 0

    def skip(self, n: int) -> None:
        self._skip = max(0, int(n))

    def __iter__(self):
        indices = list(super().__iter__())
        skip, self._skip = self._skip, 0  # only the first iteration after a resume is shortened
        return iter(indices[skip:])

    def __len__(self) -> int:
        return self.num_samples


class EvalSampler(DistributedSampler):
    """In-order shards of an evaluation set with no padding: rank r takes indices r, r + W, r + 2W, ..."""

    def __init__(self, dataset: Dataset) -> None:
        replicas, rank = world()
        super().__init__(dataset, num_replicas=replicas, rank=rank, shuffle=False, drop_last=False)
        self.num_samples = len(range(self.rank, len(dataset), self.num_replicas))
        self.total_size = len(dataset)

    def __iter__(self):
        return iter(range(self.rank, self.total_size, self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples


__all__ = ["EvalSampler", "ResumableSampler", "world"]
