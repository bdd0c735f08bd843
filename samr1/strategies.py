"""FSDP2Strategy: Lightning's ModelParallelStrategy set up for samr1's pure FSDP2 sharding, on GPUs or CPUs.

Lightning's ModelParallelStrategy (lightning 2.6) runs on CPU with gloo as it is; what it does not do by
default is what samr1 needs:
- `data_parallel_size="auto"` means the number of nodes and `tensor_parallel_size="auto"` the GPUs per node,
  a 2-D mesh for tensor parallelism. samr1 shards with FSDP2 only (models/qwen2_5_vl/sharding.py), so here
  every process is in the data-parallel dimension (tensor_parallel_size=1) on any number of devices.
- `save_distributed_checkpoint=True` writes a folder of per-rank shards that `samr1 test --ckpt_path`,
  `samr1 export` and a one-process run cannot read. Here the default is one full checkpoint file, gathered
  on rank 0 (on CPU, `cpu_offload`): it loads on any number of processes, sharded or not, and resumes a sharded
  run exactly. Cost: rank 0 needs host memory for the full float32 weights and AdamW state while saving
  (4 bytes per parameter + 8 per trainable one: 94 GB for Qwen2.5-VL-7B with its vision tower frozen). Set `save_distributed_checkpoint: true` to write shards
  instead: such a folder resumes a sharded run (`fit --ckpt_path`), but `samr1 test` / `samr1 export` on
  one process read only the full file.
- Gradients are reduced once per optimiser step, in the backward of a mini-batch's last micro-batch
  (samr1.modules.update.gradient_sync). Until then each process keeps the unsharded float32 gradient of every
  trainable parameter (4 bytes each: 30 GB for Qwen2.5-VL-7B's decoder). `reduce_every_micro_batch: true`
  reduce-scatters after every micro-batch instead: gradients stay sharded, at one reduce-scatter of the
  gradients per micro-batch instead of per step.
"""

from __future__ import annotations

from datetime import timedelta

from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.pytorch.strategies import ModelParallelStrategy


class FSDP2Strategy(ModelParallelStrategy):
    """FSDP2 over all processes (no tensor parallelism), full-state-dict checkpoints by default.

    Args:
        save_distributed_checkpoint: write per-rank shards instead of one full checkpoint file (see above).
        reduce_every_micro_batch: reduce-scatter gradients after every micro-batch (sharded gradient
            accumulation, less memory) instead of once per optimiser step (less communication; see above).
        process_group_backend: "nccl" on GPUs, "gloo" on CPUs (default: chosen from the device).
        timeout: collective timeout.
    """

    def __init__(
        self,
        save_distributed_checkpoint: bool = False,
        reduce_every_micro_batch: bool = False,
        process_group_backend: str | None = None,
        timeout: timedelta | None = default_pg_timeout,
    ) -> None:
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
            timeout=timeout,
        )
        self.reduce_every_micro_batch = reduce_every_micro_batch

    def setup_environment(self) -> None:
        # "auto" would mean the number of nodes; samr1 puts every process in the data-parallel dimension.
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()
