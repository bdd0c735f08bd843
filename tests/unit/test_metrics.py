"""Metrics against hand-computed values, and identical results in one process and in 2-process DDP (gloo)."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from samr1.metrics import (
    BoxAccuracy,
    GroupedSegmentationIoU,
    ParseFailureRate,
    SegmentationIoU,
    intersection_union,
    reasonseg_group,
    sample_iou,
)


def _masks():
    """Five samples on 4 x 4 masks with hand-counted (I, U): ignore pixels, a None, an empty/empty pair."""
    t = np.zeros((5, 4, 4), dtype=np.uint8)
    p = np.zeros((5, 4, 4), dtype=bool)
    t[0, 0:2, 0:2] = 1  # 4 target pixels
    t[0, 3, 3] = 255
    p[0, 0:2, 0:3] = True  # 4 hits, 2 misses
    p[0, 3, 3] = True  # on an ignored pixel: counts nowhere -> I 4, U 6
    t[1, :, 0] = 1  # 4 target pixels; the prediction is None -> I 0, U 4
    # sample 2: empty target, empty prediction -> I 0, U 0, IoU 1.0
    t[3, 0, :] = 255  # only ignored pixels, and a prediction on them -> I 0, U 0, IoU 1.0
    p[3, 0, :] = True
    t[4, 2:4, :] = 1  # 8 target pixels
    p[4, 3, :] = True  # 4 hits -> I 4, U 8
    preds = [p[0], None, p[2], torch.from_numpy(p[3]), p[4]]
    return preds, list(t)


EXPECTED_IU = [(4, 6), (0, 4), (0, 0), (0, 0), (4, 8)]
EXPECTED_GIOU = (4 / 6 + 0 + 1 + 1 + 0.5) / 5
EXPECTED_CIOU = 8 / 18


def test_intersection_union_by_hand():
    preds, targets = _masks()
    assert [intersection_union(p, t) for p, t in zip(preds, targets)] == EXPECTED_IU
    assert sample_iou(0, 0) == 1.0 and sample_iou(4, 6) == 4 / 6
    with pytest.raises(ValueError, match="0, 1 or 255"):
        intersection_union(None, np.full((2, 2), 2, dtype=np.uint8))
    with pytest.raises(ValueError, match="shape"):
        intersection_union(np.zeros((2, 3), dtype=bool), np.zeros((2, 2), dtype=np.uint8))


def test_giou_and_ciou_by_hand():
    metric = SegmentationIoU()
    preds, targets = _masks()
    metric.update(preds[:2], targets[:2])
    metric.update(preds[2:], targets[2:])
    result = metric.compute()
    assert set(result) == {"giou", "ciou"}
    assert result["giou"].item() == pytest.approx(EXPECTED_GIOU, abs=1e-12)
    assert result["ciou"].item() == EXPECTED_CIOU  # exact: integer totals
    assert result["giou"].item() != pytest.approx(result["ciou"].item(), abs=0.1)


def test_nothing_is_skipped_an_unparseable_answer_counts_as_empty():
    metric = SegmentationIoU()
    target = np.ones((3, 3), dtype=np.uint8)
    metric.update([None, target.astype(bool)], [target, target])
    assert metric.compute()["giou"].item() == 0.5
    assert metric.compute()["ciou"].item() == 9 / 18


def test_grouped_reports_each_group_and_overall():
    preds, targets = _masks()
    groups = [reasonseg_group(s) for s in (True, False, True, True, False)]  # long, short, long, long, short
    metric = GroupedSegmentationIoU()
    metric.update(preds, targets, groups)
    result = metric.compute()
    assert result["giou"].item() == pytest.approx(EXPECTED_GIOU, abs=1e-12)
    assert result["long/giou"].item() == pytest.approx((4 / 6 + 1 + 1) / 3, abs=1e-12)
    assert result["short/giou"].item() == pytest.approx(0.25, abs=1e-12)
    assert result["long/ciou"].item() == 4 / 6 and result["short/ciou"].item() == 4 / 12
    assert result["long/count"].item() == 3 and result["short/count"].item() == 2
    with pytest.raises(ValueError, match="unknown groups"):
        metric.update(preds[:1], targets[:1], ["medium"])


def test_box_accuracy_and_parse_failures():
    boxes = BoxAccuracy()
    gt = (0.0, 0.0, 10.0, 10.0)
    # IoU 1, 0.5 exactly (not > 0.5), 0.64, None
    boxes.update([(0, 0, 10, 10), (0, 0, 10, 5), (0, 0, 8, 8), None], [gt, gt, gt, gt])
    assert boxes.compute().item() == 0.5
    failures = ParseFailureRate()
    failures.update([None, "answer", None, {"bbox": [1, 2, 3, 4]}])
    assert failures.compute().item() == 0.5


def _run_all(rank_samples):
    """Every metric over the given (index) samples; compute() returns the synced result under DDP."""
    preds, targets = _masks()
    groups = ["long", "short", "long", "long", "short"]
    boxes = [(0, 0, 10, 10), None, (0, 0, 8, 8), (5, 5, 15, 15), (0, 0, 10, 9)]
    seg, grouped, box, parse = SegmentationIoU(), GroupedSegmentationIoU(), BoxAccuracy(), ParseFailureRate()
    for i in rank_samples:
        seg.update([preds[i]], [targets[i]])
        grouped.update([preds[i]], [targets[i]], [groups[i]])
        box.update([boxes[i]], [(0, 0, 10, 10)])
        parse.update([preds[i]])
    results = {f"seg/{k}": v for k, v in seg.compute().items()}
    results.update({f"grouped/{k}": v for k, v in grouped.compute().items()})
    results.update({"box": box.compute(), "parse": parse.compute()})
    return results


def _ddp_worker(rank: int, world_size: int, port: int, out_path: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        results = _run_all([0, 2, 4] if rank == 0 else [3, 1])  # uneven halves, different order
        if rank == 0:
            torch.save(results, out_path)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_gives_identical_results(tmp_path):
    single = _run_all([4, 3, 2, 1, 0])
    out_path = str(tmp_path / "ddp.pt")
    mp.spawn(_ddp_worker, args=(2, _free_port(), out_path), nprocs=2, join=True)
    synced = torch.load(out_path)
    assert synced.keys() == single.keys()
    for key, value in single.items():
        assert torch.equal(synced[key], value), (key, synced[key], value)  # bit-identical, not approximately
    assert single["seg/ciou"].item() == EXPECTED_CIOU and single["box"].item() == 0.6
