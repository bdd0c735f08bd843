"""Builders of small, format-faithful copies of the official dataset layouts, written into a tmp folder.

Each builder returns what a reader must produce (counts, hand-made masks, boxes), written independently of the
code under test: masks are numpy slices, RLE counts are computed here, not by pycocotools.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, width: int, height: int, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths in column-major order, starting with a (possibly empty) 0 run."""
    flat = mask.astype(np.uint8).flatten(order="F")
    counts, current, run = [], 0, 0
    for value in flat:
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = value, 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def compressed_rle(mask: np.ndarray) -> dict:
    """COCO compressed RLE with a string `counts`, as instances.json stores it (uses pycocotools' encoder)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def rect_polygon(x1: float, y1: float, x2: float, y2: float) -> list[float]:
    """A COCO flat polygon of an axis-aligned rectangle; pycocotools fills mask[y1:y2, x1:x2] for integers."""
    return [x1, y1, x2, y1, x2, y2, x1, y2]


def write_refer(data_root: Path, image_root: Path, dataset: str = "refcocog", split_by: str = "umd") -> dict:
    """refs(<split_by>).p + instances.json + COCO-named images. Returns the expectation per split:
    {split: [(sample id, sent, mask, box), ...]} in pickle order, and the annotation ids by kind."""
    size = {1: (20, 16), 2: (24, 18), 3: (12, 10)}  # image id -> (width, height)
    images = [
        {"id": i, "file_name": f"COCO_train2014_{i:012d}.jpg", "width": w, "height": h}
        for i, (w, h) in size.items()
    ]
    for image in images:
        write_image(image_root / image["file_name"], image["width"], image["height"], seed=image["id"])

    def blank(image_id: int) -> np.ndarray:
        w, h = size[image_id]
        return np.zeros((h, w), dtype=bool)

    two_parts = blank(1)
    two_parts[2:6, 1:5] = True
    two_parts[8:12, 10:16] = True
    rle_mask = blank(1)
    rle_mask[3:14, 6:9] = True
    crowd_mask = blank(2)
    crowd_mask[5:9, 2:20] = True
    overlap = blank(3)
    overlap[1:6, 1:8] = True
    overlap[4:9, 5:11] = True
    annotations = [  # (ann id, image id, segmentation, expected mask, bbox xywh)
        (10, 1, [rect_polygon(1, 2, 5, 6), rect_polygon(10, 8, 16, 12)], two_parts, [1, 2, 15, 10]),
        (11, 1, compressed_rle(rle_mask), rle_mask, [6, 3, 3, 11]),
        (12, 2, uncompressed_rle(crowd_mask), crowd_mask, [2, 5, 18, 4]),
        (13, 3, [rect_polygon(1, 1, 8, 6), rect_polygon(5, 4, 11, 9)], overlap, [1, 1, 10, 8]),
    ]
    instances = {
        "images": images,
        "annotations": [
            {
                "id": a,
                "image_id": i,
                "segmentation": s,
                "bbox": b,
                "category_id": 1,
                "area": 1.0,
                "iscrowd": 0,
            }
            for a, i, s, _, b in annotations
        ],
        "categories": [{"id": 1, "name": "thing", "supercategory": "thing"}],
    }
    splits = ("train", "val", "test") if split_by != "unc" else ("train", "val", "testA", "testB")
    # ref -> (ann id, split, sentences); several sentences per ref, refs of one image in different splits
    plan = [
        (10, splits[0], ["the two boxes", "both squares", "left and right"]),
        (11, splits[0], ["the bar"]),
        (12, splits[1], ["the wide one", "crowd"]),
        (11, splits[2], ["middle bar"]),
        (13, splits[-1], ["overlapping pair", "two rects"]),
    ]
    by_ann = {a: (i, m, b) for a, i, _, m, b in annotations}
    refs, expected, sent_id = [], {s: [] for s in splits}, 100
    for ref_id, (ann_id, split, sents) in enumerate(plan):
        image_id, mask, (x, y, w, h) = by_ann[ann_id]
        sentences = []
        for sent in sents:
            sentences.append(
                {"raw": sent.capitalize(), "sent": sent, "tokens": sent.split(), "sent_id": sent_id}
            )
            expected[split].append((f"{dataset}-{sent_id}", sent, mask, (x, y, x + w, y + h)))
            sent_id += 1
        refs.append(
            {
                "ref_id": ref_id,
                "ann_id": ann_id,
                "image_id": image_id,
                "category_id": 1,
                "split": split,
                "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg",  # not a real file, as in the release
                "sent_ids": [s["sent_id"] for s in sentences],
                "sentences": sentences,
            }
        )
    folder = data_root / dataset
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"refs({split_by}).p", "wb") as f:
        pickle.dump(refs, f, protocol=2)  # the release was written by Python 2
    (folder / "instances.json").write_text(json.dumps(instances))
    return expected


def rect(x1: int, y1: int, x2: int, y2: int) -> list[list[float]]:
    """A labelme rectangle polygon; OpenCV's outline + fill covers mask[y1:y2 + 1, x1:x2 + 1]."""
    return [[x1, y1], [x2, y1], [x2, y2], [x1, y2]]


def write_reasonseg_item(folder: Path, name: str, annotation: dict, size=(24, 20), encoding="utf-8") -> None:
    write_image(folder / f"{name}.jpg", *size, seed=len(name))
    (folder / f"{name}.json").write_bytes(json.dumps(annotation, ensure_ascii=False).encode(encoding))


def write_reasonseg(root: Path) -> dict:
    """ReasonSeg/{train,val}: target/ignore/flag polygons (file order != area order), a cp1252 file, a file
    without polygons. Returns {split: {name: expected uint8 mask}} for val and the texts per train image."""
    val, train = root / "val", root / "train"
    # "a": the ignore hole comes first in the file; painted in file order, the larger target would cover it.
    write_reasonseg_item(
        val,
        "a",
        {
            "text": ["what would keep me dry?", "the umbrella"],
            "is_sentence": True,
            "shapes": [
                {"label": "ignore", "points": rect(6, 6, 9, 8)},
                {"label": "target", "points": [[2.9, 3.7], [15.2, 3.7], [15.2, 12.99], [2.9, 12.99]]},
                {"label": "flag", "points": rect(0, 0, 23, 19)},
            ],
        },
    )
    a = np.zeros((20, 24), dtype=np.uint8)
    a[3:13, 2:16] = 1  # points truncated: (2, 3) .. (15, 12), both ends inclusive
    a[6:9, 6:10] = 255
    # "b": cp1252 bytes (0x92 is a curly apostrophe), two separate target parts.
    write_reasonseg_item(
        val,
        "b",
        {
            "text": ["the dog\u2019s toys"],
            "is_sentence": False,
            "shapes": [
                {"label": "target", "points": rect(1, 1, 3, 2)},
                {"label": "target", "points": rect(18, 14, 22, 18)},
            ],
        },
        encoding="cp1252",
    )
    b = np.zeros((20, 24), dtype=np.uint8)
    b[1:3, 1:4] = 1
    b[14:19, 18:23] = 1
    write_reasonseg_item(val, "c", {"text": ["nothing here"], "is_sentence": False, "shapes": []})
    texts = {"t1": ["one", "two", "three"], "t2": ["only"]}
    for name, t in texts.items():
        write_reasonseg_item(
            train,
            name,
            {"text": t, "is_sentence": False, "shapes": [{"label": "target", "points": rect(2, 2, 5, 5)}]},
        )
    return {"val": {"a": a, "b": b, "c": np.zeros((20, 24), dtype=np.uint8)}, "train_texts": texts}
