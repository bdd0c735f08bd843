"""Two DDP processes (CPU, gloo) with completions of very different lengths update exactly as one process on
the union of their completions, under every aggregation ("token" in the default run, the others marked
slow); gradients are all-reduced once per optimiser step.

The update loop runs on fixed completions (tests/global_batch_worker.py): no sampling, so the comparison is
deterministic up to float rounding.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch
from global_batch_worker import MICRO_BATCHES, OPTIMIZER_STEPS, run

# "token" is the aggregation a per-process normalisation gets wrong here (each process holds as many
# sequences as the other, so per-process sequence means already average to the global one); the other two
# check the same path, slowly (a 2-process launch each).
AGGREGATIONS = [
    "token",
    pytest.param("sequence", marks=pytest.mark.slow),
    pytest.param("fixed", marks=pytest.mark.slow),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(model: str, aggregation: str, out) -> list[dict]:
    """Both ranks' results of a 2-process DDP run of global_batch_worker.py."""
    worker = os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "global_batch_worker.py"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    cmd = [sys.executable, worker, "--model", model, "--out", str(out), "--aggregations", aggregation]
    logs = [out / f"rank{r}.log" for r in range(2)]
    procs = [
        subprocess.Popen(
            cmd,
            env={**env, "LOCAL_RANK": str(r), "NODE_RANK": "0"},
            stdout=subprocess.DEVNULL,
            stderr=log.open("w"),  # a file, not a pipe: a full pipe would stall one rank and both with it
        )
        for r, log in enumerate(logs)
    ]
    for p, log in zip(procs, logs):
        assert p.wait(timeout=600) == 0, log.read_text()[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=True)[aggregation] for r in range(2)]


@pytest.fixture(scope="module")
def runs(tiny_checkpoints, tmp_path_factory):
    """aggregation -> (rank 0, rank 1, one process), each run once per module."""
    cache: dict[str, tuple[dict, dict, dict]] = {}

    def get(aggregation: str):
        if aggregation not in cache:
            out = tmp_path_factory.mktemp(f"global_batch_{aggregation}")
            rank0, rank1 = _two_processes(tiny_checkpoints["policy"], aggregation, out)
            cache[aggregation] = (rank0, rank1, run(tiny_checkpoints["policy"], aggregation, 1, {}))
        return cache[aggregation]

    return get


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_two_processes_equal_one_process_on_the_union(runs, aggregation):
    rank0, rank1, single = runs(aggregation)
    assert len(single["grads"]) == len(rank0["grads"]) == OPTIMIZER_STEPS
    # float64, and the single process's micro-batches are the ranks' ones: the runs differ only by the order
    # of additions (~1e-14 relative); normalising per process instead changes the gradients by ~100%.
    for step, (got, want) in enumerate(zip(rank0["grads"], single["grads"])):
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12, msg=f"gradient of optimiser step {step}")
    for name, want in single["params"].items():
        torch.testing.assert_close(rank0["params"][name], want, rtol=0, atol=1e-10, msg=name)
        assert torch.equal(rank0["params"][name], rank1["params"][name]), f"replicas differ: {name}"
    # The logged statistics are global too: token-weighted over both processes, the loss a global mean.
    assert rank0["stats"].keys() == single["stats"].keys()
    for key in ("loss", "kl", "entropy", "ratio_mean", "clip_frac_low", "clip_frac_high", "grad_norm"):
        assert rank0["stats"][key] == pytest.approx(single["stats"][key], rel=1e-9, abs=1e-12), key
        assert rank0["stats"][key] == rank1["stats"][key], key
    assert single["stats"]["kl"] > 0 and single["stats"]["grad_norm"] > 0


def test_gradients_are_reduced_once_per_optimiser_step(runs):
    assert MICRO_BATCHES == 2 * OPTIMIZER_STEPS  # so reducing in every micro-batch's backward would show
    for rank in runs("token")[:2]:
        # One entry per bucket all-reduce: whether it was the last bucket of its backward pass.
        reductions = rank["reductions"]
        assert sum(reductions) == OPTIMIZER_STEPS, reductions  # one reducing backward per optimiser step
        assert reductions[-1]
