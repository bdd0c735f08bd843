"""Two DDP processes (CPU, gloo) with completions of very different lengths update exactly as one process on
the union of their completions, under every aggregation; gradients are all-reduced once per optimiser step.

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

AGGREGATIONS = ("token", "sequence", "fixed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes(tiny_checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("global_batch")
    worker = os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "global_batch_worker.py"
    )
    port = str(_free_port())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
    cmd = [sys.executable, worker, "--model", tiny_checkpoints["policy"], "--out", str(out)]
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
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.fixture(scope="module")
def one_process(tiny_checkpoints):
    return {a: run(tiny_checkpoints["policy"], a, 1, {}) for a in AGGREGATIONS}


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_two_processes_equal_one_process_on_the_union(two_processes, one_process, aggregation):
    rank0, rank1 = (r[aggregation] for r in two_processes)
    single = one_process[aggregation]
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


def test_gradients_are_reduced_once_per_optimiser_step(two_processes):
    assert MICRO_BATCHES == 2 * OPTIMIZER_STEPS  # so reducing in every micro-batch's backward would show
    for rank in two_processes:
        for aggregation in AGGREGATIONS:
            # One entry per bucket all-reduce: whether it was the last bucket of its backward pass.
            reductions = rank[aggregation]["reductions"]
            assert sum(reductions) == OPTIMIZER_STEPS, reductions  # one reducing backward per optimiser step
            assert reductions[-1]
