"""SocioSeg: both layouts read exactly, levels, two-image prompts, the multi-object reward, per-level metrics."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from samr1.datamodules import SampleError, SocioSegDataModule, SocioSegDataset
from samr1.datamodules.masks import component_boxes
from samr1.datamodules.socioseg import level_from_id, normalise_level, read_levels_csv
from samr1.modules.evaluation import evaluate_sample
from samr1.rewards import MultiObjectMatchReward
from samr1.rewards.box import box_iou
from samr1.rewards.multi_object import box_iou_matrix, box_l1_matrix, hungarian_match, match_reward
from samr1.sample import CoordTransform, SegSample

SAT_SIZE, MAP_SIZE = (100, 80), (60, 50)  # (width, height); the map differs on purpose


def _pixels(width: int, height: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, size=(height, width, 3), dtype=np.uint8)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def socioseg_examples() -> list[dict]:
    """The fixture's examples with what a reader must produce: target, GT boxes, level (hand-made)."""
    w, h = SAT_SIZE
    two = np.zeros((h, w), dtype=np.uint8)
    two[2:8, 3:10] = 255  # component 1: box (3, 2, 10, 8)
    two[20:30, 25:38] = 255  # component 2: box (25, 20, 38, 30)
    rgb = np.zeros((h, w, 3), dtype=np.uint8)
    rgb[10:15, 10:20, 2] = 7  # non-zero in the blue channel only
    rgb[15, 20, 2] = 7  # touches (14, 19) diagonally: one 8-connected component
    tiny = np.zeros((h, w), dtype=np.uint8)
    tiny[0:4, 0:4] = 1
    return [
        {
            "id": "socio-name_0001",
            "problem": "Find Peking University.",
            "question": {},
            "mask_image": Image.fromarray(two, mode="L"),
            "target": two > 0,
            "gt_boxes": [[3.0, 2.0, 10.0, 8.0], [25.0, 20.0, 38.0, 30.0]],
            "level": "socio-name",
        },
        {
            "id": "0002",
            "problem": "Segment the hospitals.",
            "question": {"level": "Socio-Class"},
            "mask_image": Image.fromarray(rgb, mode="RGB"),
            "target": rgb.any(axis=-1),
            "gt_boxes": [[10.0, 10.0, 21.0, 16.0]],
            "level": "socio-class",
        },
        {
            "id": "0003",
            "problem": "Where do people go for leisure?",
            "question": {},
            "mask_image": Image.fromarray(tiny, mode="L"),
            "target": tiny > 0,
            "gt_boxes": [[0.0, 0.0, 4.0, 4.0]],
            "level": None,
        },
    ]


def _images(index: int) -> tuple[np.ndarray, np.ndarray]:
    return _pixels(*SAT_SIZE, seed=index), _pixels(*MAP_SIZE, seed=100 + index)


def write_raw(root: Path, split: str = "val") -> list[dict]:
    """`<root>/<split>/<id>/{sat,map,mask}.png + question.json`, plus an incomplete folder (no map.png) and a
    stray file that is not an example."""
    examples = socioseg_examples()
    for index, example in enumerate(examples):
        folder = root / split / example["id"]
        folder.mkdir(parents=True)
        sat, map_ = _images(index)
        Image.fromarray(sat).save(folder / "sat.png")
        Image.fromarray(map_).save(folder / "map.png")
        example["mask_image"].save(folder / "mask.png")
        (folder / "question.json").write_text(
            json.dumps({"problem": example["problem"], **example["question"]})
        )
        example.update(sat=sat, map=map_)
    broken = root / split / "0004"
    broken.mkdir()
    Image.fromarray(_pixels(*SAT_SIZE, seed=9)).save(broken / "sat.png")
    Image.fromarray(np.zeros(SAT_SIZE[::-1], dtype=np.uint8)).save(broken / "mask.png")
    (broken / "question.json").write_text(json.dumps({"problem": "incomplete"}))
    (root / split / "README.txt").write_text("not an example")
    return examples


NO_JSON_LEVELS = {"0002": None}  # 0002's level is in its question.json, which the parquet copy lacks
IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def write_parquet(
    path: Path, examples: list[dict], struct: bool = True, drop: str | None = None, level_column: bool = False
) -> Path:
    """The Hugging Face copy: columns id, problem, sat_image, map_image, mask_label (the `Image` feature's
    {"bytes", "path"} structs, or plain bytes), two rows per row group."""
    columns: dict[str, pa.Array] = {
        "id": pa.array([e["id"] for e in examples]),
        "problem": pa.array([e["problem"] for e in examples]),
    }
    for column, key in (("sat_image", "sat"), ("map_image", "map"), ("mask_label", "mask")):
        blobs = [_png(e["mask_image"]) if key == "mask" else _png(Image.fromarray(e[key])) for e in examples]
        if struct:
            cells = [{"bytes": b, "path": f"{e['id']}_{key}.png"} for b, e in zip(blobs, examples)]
            columns[column] = pa.array(cells, type=IMAGE_STRUCT)
        else:
            columns[column] = pa.array(blobs, type=pa.binary())
    if level_column:
        columns["level"] = pa.array([e["level"] for e in examples], type=pa.string())
    if drop:
        columns.pop(drop)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path, row_group_size=2)
    return path


def _with_images(examples: list[dict]) -> list[dict]:
    for index, example in enumerate(examples):
        example["sat"], example["map"] = _images(index)
    return examples


def assert_reads_exactly(dataset: SocioSegDataset, examples: list[dict], levels: dict | None = None) -> None:
    """Every sample equals its hand-made expectation; `levels` (id -> level) replaces the examples' levels."""
    by_id = {e["id"]: {**e, "level": (levels or {}).get(e["id"], e["level"])} for e in examples}
    assert sorted(item.id for item in dataset.items) == sorted(by_id)
    for index in range(len(dataset)):
        sample = dataset[index]
        expected = by_id[sample.id]
        assert sample.query == expected["problem"]
        np.testing.assert_array_equal(np.asarray(sample.load_image()), expected["sat"], err_msg=sample.id)
        np.testing.assert_array_equal(sample.mask, expected["target"].astype(np.uint8), err_msg=sample.id)
        assert sample.mask.dtype == np.uint8 and set(np.unique(sample.mask)) <= {0, 1}
        assert sample.meta["gt_boxes"] == expected["gt_boxes"]
        assert sample.meta["num_objects"] == len(expected["gt_boxes"])
        assert sample.meta.get("group") == expected["level"] == sample.meta.get("level")
        xs = [b[0] for b in expected["gt_boxes"]] + [b[2] for b in expected["gt_boxes"]]
        ys = [b[1] for b in expected["gt_boxes"]] + [b[3] for b in expected["gt_boxes"]]
        assert sample.box == (min(xs), min(ys), max(xs), max(ys))
        assert all(sample.mask[int(y), int(x)] == 1 for x, y in sample.points)
        assert "extra_images" not in sample.meta  # satellite-only is the default


# ---------------------------------------------------------------------------------------------- raw layout
def test_raw_layout_is_read_exactly_and_the_incomplete_folder_is_skipped(tmp_path):
    examples = write_raw(tmp_path / "SocioSeg")
    dataset = SocioSegDataset(tmp_path / "SocioSeg", "val", on_error="skip")
    assert dataset.layout == "raw"
    assert [item.id for item in dataset.items] == ["0002", "0003", "socio-name_0001"]
    assert_reads_exactly(dataset, examples)
    sample = dataset[2]
    assert sample.image_path == str(tmp_path / "SocioSeg" / "val" / "socio-name_0001" / "sat.png")
    assert len(dataset.skipped) == 1
    assert str(tmp_path / "SocioSeg" / "val" / "0004") in dataset.skipped[0]
    assert "missing map.png" in dataset.skipped[0]


def test_incomplete_example_directory_is_an_error_naming_it(tmp_path):
    write_raw(tmp_path / "SocioSeg")
    folder = tmp_path / "SocioSeg" / "val" / "0004"
    with pytest.raises(FileNotFoundError, match=re.escape(f"incomplete example directory {folder}")):
        SocioSegDataset(tmp_path / "SocioSeg", "val")


def test_broken_question_and_mask_size_follow_on_error(tmp_path):
    write_raw(tmp_path / "SocioSeg")
    (tmp_path / "SocioSeg" / "val" / "0004" / "map.png").write_bytes(_png(Image.new("RGB", MAP_SIZE)))
    (tmp_path / "SocioSeg" / "val" / "0003" / "question.json").write_text(json.dumps({"question": "x"}))
    Image.new("L", (8, 8)).save(tmp_path / "SocioSeg" / "val" / "0002" / "mask.png")
    with pytest.raises(SampleError, match="0002.*the mask is \\(8, 8\\)"):
        SocioSegDataset(tmp_path / "SocioSeg", "val")
    dataset = SocioSegDataset(tmp_path / "SocioSeg", "val", on_error="skip")
    assert [item.id for item in dataset.items] == ["0004", "socio-name_0001"]
    assert "'problem' must be a non-empty string" in dataset.skipped[1]


def test_missing_split_folder_names_the_path(tmp_path):
    write_raw(tmp_path / "SocioSeg")
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "SocioSeg" / "test"))):
        SocioSegDataset(tmp_path / "SocioSeg", "test")


# ---------------------------------------------------------------------------------------------- levels
@pytest.mark.parametrize(
    "value, level",
    [
        ("socio-name", "socio-name"),
        ("Socio-Class", "socio-class"),
        ("socio_semantic", "socio-semantic"),
        ("SocioNames", "socio-name"),
        ("semantic", "socio-semantic"),
        ("classes", "socio-class"),
        ("building", None),
        (3, None),
    ],
)
def test_level_spellings(value, level):
    assert normalise_level(value) == level


@pytest.mark.parametrize(
    "sample_id, level",
    [
        ("socio-name_0001", "socio-name"),
        ("beijing_socio_class_12", "socio-class"),
        ("SocioSemantic-7", "socio-semantic"),
        ("class_0042", "socio-class"),
        ("name3", "socio-name"),
        ("0003", None),
        ("classroom_1", None),
        ("tile_name_1", None),
    ],
)
def test_level_from_id(sample_id, level):
    assert level_from_id(sample_id) == level


def test_levels_csv_fills_and_overrides_levels(tmp_path):
    examples = write_raw(tmp_path / "SocioSeg")
    csv_path = tmp_path / "levels.csv"
    csv_path.write_text("id,level\n0003,socio-semantic\n0002,socio_name\nunused,class\n")
    dm = SocioSegDataModule(str(tmp_path / "SocioSeg"), levels_csv=str(csv_path), on_error="skip")
    dataset = dm.dataset("val")
    groups = {dataset[i].id: dataset[i].meta.get("group") for i in range(len(dataset))}
    assert groups == {"0002": "socio-name", "0003": "socio-semantic", "socio-name_0001": "socio-name"}
    assert examples[2]["level"] is None  # the files alone do not carry 0003's level
    csv_path.write_text("id,level\n0003,suburb\n")
    with pytest.raises(ValueError, match=re.escape(f"{csv_path}:2: unknown level 'suburb'")):
        read_levels_csv(csv_path)
    csv_path.write_text("name,level\n0003,socio-name\n")
    with pytest.raises(ValueError, match="'id' and 'level'"):
        read_levels_csv(csv_path)


# ---------------------------------------------------------------------------------------------- parquet layout
def test_hugging_face_parquet_copy_is_read_exactly(tmp_path):
    examples = _with_images(socioseg_examples())
    write_parquet(tmp_path / "SocioSeg" / "data" / "test-00000-of-00001.parquet", examples)
    dataset = SocioSegDataset(tmp_path / "SocioSeg", "test")
    assert dataset.layout == "parquet"
    assert [item.id for item in dataset.items] == ["socio-name_0001", "0002", "0003"]  # file order
    # the HF columns carry no question.json keys: only the id gives a level (0002's is in its question.json)
    assert_reads_exactly(dataset, examples, levels=NO_JSON_LEVELS)
    assert dataset[1].image_path is None and dataset[1].meta["source"].endswith(
        "test-00000-of-00001.parquet:1"
    )


def test_parquet_level_column_is_read(tmp_path):
    examples = _with_images(socioseg_examples())
    write_parquet(tmp_path / "SocioSeg" / "test.parquet", examples, level_column=True)
    assert_reads_exactly(SocioSegDataset(tmp_path / "SocioSeg", "test"), examples)


def test_both_layouts_give_the_same_samples(tmp_path):
    examples = write_raw(tmp_path / "raw")
    write_parquet(tmp_path / "hf" / "data" / "val-00000-of-00001.parquet", examples)
    raw = SocioSegDataset(tmp_path / "raw", "val", on_error="skip", images="map+satellite")
    hf = SocioSegDataset(tmp_path / "hf", "val", images="map+satellite")
    hf_by_id = {hf[i].id: hf[i] for i in range(len(hf))}
    for index in range(len(raw)):
        a = raw[index]
        b = hf_by_id[a.id]
        np.testing.assert_array_equal(a.mask, b.mask)
        np.testing.assert_array_equal(np.asarray(a.image), np.asarray(b.image))
        np.testing.assert_array_equal(
            np.asarray(a.meta["extra_images"][0]), np.asarray(b.meta["extra_images"][0])
        )
        assert (a.query, a.box, a.points, a.meta["gt_boxes"]) == (
            b.query,
            b.box,
            b.points,
            b.meta["gt_boxes"],
        )


@pytest.mark.parametrize(
    "relative, split",
    [
        ("data/val-00000-of-00001.parquet", "val"),
        ("data/validation-00000-of-00002.parquet", "val"),
        ("val/part-0.parquet", "val"),
        ("train.parquet", "train"),
        ("test-00000.parquet", "test"),
    ],
)
def test_parquet_file_patterns_and_plain_bytes_columns(tmp_path, relative, split):
    examples = _with_images(socioseg_examples()[:2])
    write_parquet(tmp_path / "SocioSeg" / relative, examples, struct=False)
    dataset = SocioSegDataset(tmp_path / "SocioSeg", split, layout="parquet")
    assert_reads_exactly(dataset, examples, levels=NO_JSON_LEVELS)


def test_custom_split_name_in_both_layouts_and_the_ood_config(tmp_path):
    # "test-ood" next to "test": a split's files never include those of a longer name sharing its prefix.
    examples = _with_images(socioseg_examples())
    write_parquet(tmp_path / "hub" / "data" / "test-ood-00000-of-00001.parquet", examples[:2])
    write_parquet(tmp_path / "hub" / "data" / "test-00000-of-00001.parquet", examples[2:])
    ood = SocioSegDataset(tmp_path / "hub", "test-ood")
    assert ood.layout == "parquet" and [item.id for item in ood.items] == ["socio-name_0001", "0002"]
    assert [item.id for item in SocioSegDataset(tmp_path / "hub", "test").items] == ["0003"]
    raw_examples = write_raw(tmp_path / "raw", split="new_region")
    raw = SocioSegDataset(tmp_path / "raw", "new_region", on_error="skip")
    assert raw.layout == "raw" and len(raw) == 3
    assert_reads_exactly(raw, raw_examples)
    assert raw[0].meta["split"] == "new_region"

    config = yaml.safe_load(Path("configs/data/socioseg_ood.yaml").read_text())
    assert config["model"]["eval_groups"] == ["socio-name", "socio-class", "socio-semantic"]
    init = {**config["data"]["init_args"], "root": str(tmp_path / "hub"), "test_split": "test-ood"}
    module = SocioSegDataModule(**init)
    module.setup("test")
    batch = next(iter(module.test_dataloader()))
    assert [s.id for s in batch] == ["socio-name_0001", "0002"]
    assert [s.meta.get("group") for s in batch] == ["socio-name", None]  # the copy lacks 0002's json level
    module = SocioSegDataModule(**config["data"]["init_args"])  # the shipped default names its folder
    with pytest.raises(FileNotFoundError, match="data/SocioSeg"):
        module.setup("test")


def test_parquet_missing_column_names_file_and_column(tmp_path):
    examples = _with_images(socioseg_examples()[:1])
    path = write_parquet(tmp_path / "SocioSeg" / "test.parquet", examples, drop="mask_label")
    with pytest.raises(ValueError, match=re.escape(f"{path}: missing column 'mask_label'")):
        SocioSegDataset(tmp_path / "SocioSeg", "test")
    with pytest.raises(FileNotFoundError, match="no parquet files for split 'val'"):
        SocioSegDataset(tmp_path / "SocioSeg", "val", layout="parquet")


def test_parquet_empty_image_cell_follows_on_error(tmp_path):
    examples = _with_images(socioseg_examples())
    path = tmp_path / "SocioSeg" / "test.parquet"
    write_parquet(path, examples)
    table = pq.read_table(path)
    maps = table.column("map_image").to_pylist()
    maps[1] = None
    table = table.set_column(
        table.schema.get_field_index("map_image"), "map_image", pa.array(maps, IMAGE_STRUCT)
    )
    pq.write_table(table, path)
    with pytest.raises(SampleError, match=re.escape(f"{path}:1 (id 0002)") + ".*'map_image' holds no image"):
        SocioSegDataset(tmp_path / "SocioSeg", "test")
    dataset = SocioSegDataset(tmp_path / "SocioSeg", "test", on_error="skip")
    assert [item.id for item in dataset.items] == ["socio-name_0001", "0003"] and len(dataset.skipped) == 1


# ---------------------------------------------------------------------------------------------- two images
def test_map_plus_satellite_prompt_shows_the_map_first_and_maps_answers_to_the_satellite(
    tmp_path, tiny_checkpoints
):
    from samr1.models.qwen2_5_vl.loading import load_processor
    from samr1.modules.prompting import PromptBuilder

    examples = write_raw(tmp_path / "SocioSeg")
    dataset = SocioSegDataset(tmp_path / "SocioSeg", "val", images="map+satellite", on_error="skip")
    sample = dataset[2]
    (map_image,) = sample.meta["extra_images"]
    np.testing.assert_array_equal(np.asarray(map_image), examples[0]["map"])
    builder = PromptBuilder(load_processor(tiny_checkpoints["policy"]), image_size=None)
    batch = builder([sample, dataset[0]])
    assert batch.images_per_prompt == [2, 2]
    assert all(text.count("<|vision_start|>") == 2 for text in batch.texts)
    # rows of image_grid_thw: map then satellite, per prompt; the transform is the satellite image's
    grids = batch.image_grid_thw.tolist()
    assert (grids[0][2] * 14, grids[0][1] * 14) == (56, 56)  # the 60 x 50 map
    assert (grids[1][2] * 14, grids[1][1] * 14) == (112, 84)  # the 100 x 80 satellite image
    transform = batch.samples[0].transform
    assert transform.original_size == SAT_SIZE and transform.model_size == (112, 84)


# ---------------------------------------------------------------------------------------------- reward
GT = [[0, 0, 10, 10], [20, 20, 100, 100]]


def _sample(gt_boxes=GT, transform=None, **kwargs) -> SegSample:
    meta = {} if gt_boxes is None else {"gt_boxes": gt_boxes}
    return SegSample(
        id="s", query="q", image=Image.new("RGB", (120, 120)), meta=meta, transform=transform, **kwargs
    )


def _answer(*boxes) -> str:
    objects = [
        {"bbox": list(b), "points_1": [1, 1], "points_2": [2, 2]} if b else {"points_1": [1, 1]}
        for b in boxes
    ]
    return f"<think>t</think><answer>{json.dumps(objects)}</answer>"


# Hand-computed. [40, 40, 100, 100] vs [20, 20, 100, 100]: IoU 3600 / 6400 = 0.5625 > 0.5, L1 (20+20+0+0)/4 = 10
# (not < 10): pair score 1 ("sum"), 0 ("both").
@pytest.mark.parametrize(
    "completion, sum_score, both_score, matched",
    [
        (_answer(*GT), 2.0, 1.0, 2),
        (_answer(GT[1], GT[0]), 2.0, 1.0, 2),  # order does not matter
        (_answer(GT[0], [40, 40, 100, 100]), 1.5, 0.5, 1),
        (_answer(GT[0], GT[1], [200, 200, 210, 210]), 4 / 3, 2 / 3, 2),  # a surplus object
        (_answer(GT[0]), 1.0, 0.5, 1),  # a missing object
        (_answer(GT[0], None), 1.0, 0.5, 1),  # an object without a box matches nothing
        ('<answer>{"bbox": [0, 0, 10, 10]}</answer>', 1.0, 0.5, 1),  # a single object, not a list
        ("<answer>[]</answer>", 0.0, 0.0, 0),
        ("no answer", 0.0, 0.0, 0),
    ],
)
def test_multi_object_reward_matches_hand_computed_values(completion, sum_score, both_score, matched):
    summed = MultiObjectMatchReward()
    assert summed([completion], [_sample()]).item() == pytest.approx(sum_score)
    assert summed.details["matched"].item() == matched
    both = MultiObjectMatchReward(criterion="both")
    assert both([completion], [_sample()]).item() == pytest.approx(both_score)


def test_hungarian_assignment_beats_greedy():
    # A matches both GT boxes, B only the first: greedy A -> GT1 leaves B unmatched; the optimum matches both.
    a, b = [1, 1, 21, 21], [-2, -2, 18, 18]
    gt = [[0, 0, 20, 20], [2, 2, 22, 22]]
    iou = box_iou_matrix([a, b], gt)
    assert iou[1, 1] == pytest.approx(256 / 544) and iou[1, 0] == pytest.approx(324 / 476)
    assert match_reward([a, b], gt, criterion="both") == (1.0, 2)
    rows, cols = hungarian_match(np.array([[1.0, 1.0], [1.0, 0.0]]))
    assert dict(zip(rows.tolist(), cols.tolist())) == {0: 1, 1: 0}
    assert match_reward([], []) == (2.0, 0) and match_reward([], [[0, 0, 1, 1]]) == (0.0, 0)


def test_matrices_agree_with_the_scalar_box_functions():
    pred = [[0, 0, 10, 10], [5, 5, 15, 25], [3, 3, 3, 3]]
    gt = [[0, 0, 10, 10], [6, 4, 16, 20]]
    iou, l1 = box_iou_matrix(pred, gt), box_l1_matrix(pred, gt)
    for i, p in enumerate(pred):
        for j, g in enumerate(gt):
            assert iou[i, j] == pytest.approx(box_iou(p, g))
            assert l1[i, j] == pytest.approx(np.abs(np.subtract(p, g)).mean())


def test_reward_compares_in_model_pixels_and_falls_back_to_mask_components():
    # Original 60 x 60 seen at 120 x 120: GT [0, 0, 30, 30] is [0, 0, 60, 60] for the model; the answer
    # [0, 0, 30, 30] (model px) has IoU 0.25 and L1 15 with it: no hit.
    transform = CoordTransform(original_size=(60, 60), model_size=(120, 120))
    reward = MultiObjectMatchReward()
    sample = _sample([[0, 0, 30, 30]], transform=transform)
    assert reward([_answer([0, 0, 60, 60]), _answer([0, 0, 30, 30])], [sample, sample]).tolist() == [2.0, 0.0]
    mask = np.zeros((30, 40), dtype=np.uint8)
    mask[0:10, 0:10] = 1
    mask[20:30, 20:40] = 1
    no_meta = _sample(None, mask=mask)
    assert component_boxes(mask == 1) == [(0.0, 0.0, 10.0, 10.0), (20.0, 20.0, 40.0, 30.0)]
    assert reward([_answer([0, 0, 10, 10], [20, 20, 40, 30])], [no_meta]).item() == 2.0
    assert component_boxes(mask == 1, min_area=101) == [(20.0, 20.0, 40.0, 30.0)]


# ---------------------------------------------------------------------------------------------- evaluation
class BoxSegmenter:
    """A stand-in for SAM: for each of the K prompted boxes, the mask of that box."""

    def predict(self, image, boxes=None, points=None, point_labels=None, multimask=True):
        masks = np.zeros((len(boxes), *image.shape[:2]), dtype=bool)
        for k, box in enumerate(boxes):
            x1, y1, x2, y2 = (int(round(v)) for v in box)
            masks[k, y1:y2, x1:x2] = True
        return masks, np.ones(len(boxes))


def test_list_answer_is_segmented_as_the_union_of_its_objects(tmp_path):
    write_raw(tmp_path / "SocioSeg")
    sample = SocioSegDataset(tmp_path / "SocioSeg", "val", on_error="skip")[2]  # the two-component mask
    text = _answer(*sample.meta["gt_boxes"])
    united = evaluate_sample(text, sample, BoxSegmenter(), multi_object=True)
    assert united.iou == 1.0 and united.group == "socio-name"
    first_only = evaluate_sample(text, sample, BoxSegmenter(), multi_object=False)
    assert first_only.iou == pytest.approx(42 / (42 + 130))


# ---------------------------------------------------------------------------------------------- end to end
def test_two_image_prompts_run_through_the_tiny_model(tmp_path, tiny_checkpoints, cpu_trainer, monkeypatch):
    from samr1.modules.policy import GRPOModule
    from samr1.rewards import ThinkFormatReward

    write_raw(tmp_path / "SocioSeg")
    module = GRPOModule(
        model_path=tiny_checkpoints["policy"],
        sam_checkpoint=tiny_checkpoints["sam_checkpoint"],
        sam_model_type=tiny_checkpoints["sam_model_type"],
        rewards=[ThinkFormatReward(), MultiObjectMatchReward()],
        image_size=(56, 56),
        group_size=2,
        max_new_tokens=6,
        eval_groups=("socio-name", "socio-class", "socio-semantic"),
        eval_multi_object=True,
    )
    seen = []
    original = GRPOModule.prompts

    def spy(self, samples):
        batch = original(self, samples)
        seen.append(batch)
        return batch

    monkeypatch.setattr(GRPOModule, "prompts", spy)
    data = SocioSegDataModule(
        str(tmp_path / "SocioSeg"),
        images="map+satellite",
        test_split="val",
        on_error="skip",
        eval_batch_size=2,
    )
    trainer = cpu_trainer()
    results = trainer.test(module, datamodule=data, verbose=False)[0]
    assert sum(len(batch) for batch in seen) == 3
    for batch in seen:
        assert set(batch.images_per_prompt) == {2}
        assert batch.image_grid_thw.shape[0] == 2 * len(batch)
        assert all(text.count("<|vision_start|>") == 2 for text in batch.texts)
        assert all(s.transform.original_size == SAT_SIZE for s in batch.samples)
    assert {"test/giou", "test/socio-name/giou", "test/socio-class/ciou"} <= set(results)


def test_samr1_test_prints_per_level_metrics(tmp_path, tiny_checkpoints, capsys):
    from samr1.cli import main

    write_raw(tmp_path / "SocioSeg")
    (tmp_path / "SocioSeg" / "val" / "0004" / "map.png").write_bytes(_png(Image.new("RGB", MAP_SIZE)))
    levels = tmp_path / "levels.csv"
    levels.write_text("id,level\n0003,socio-semantic\n0004,socio-semantic\n")
    with open("configs/demo.yaml") as f:
        config = yaml.safe_load(f)
    config["model"].update(
        model_path=tiny_checkpoints["policy"],
        sam_checkpoint=tiny_checkpoints["sam_checkpoint"],
        max_new_tokens=6,
        image_size=[56, 56],
        predictions_path=str(tmp_path / "pred.jsonl"),
    )
    config["trainer"].update(default_root_dir=str(tmp_path), logger=False, callbacks=[])
    config.pop("data")
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(config))
    main(
        [
            "test",
            "--config",
            str(base),
            "--config",
            "configs/data/socioseg_val.yaml",
            f"--data.init_args.root={tmp_path / 'SocioSeg'}",
            f"--data.init_args.levels_csv={levels}",
            "--data.init_args.eval_batch_size=4",
        ]
    )
    out = capsys.readouterr().out
    for level, count in (("socio-name", 1), ("socio-class", 1), ("socio-semantic", 2)):
        assert re.search(rf"^{level}/giou\s+\d+\.\d\d%$", out, re.M), out
        assert re.search(rf"^{level}/ciou\s+\d+\.\d\d%$", out, re.M), out
        assert re.search(rf"^{level}/count\s+{count}$", out, re.M), out
    rows = [json.loads(line) for line in (tmp_path / "pred.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == ["0002", "0003", "0004", "socio-name_0001"]


def test_two_image_training_steps_run_through_the_tiny_model(tmp_path, tiny_checkpoints, cpu_trainer):
    from samr1.modules.policy import GRPOModule
    from samr1.rewards import ThinkFormatReward

    write_raw(tmp_path / "SocioSeg", split="train")
    module = GRPOModule(
        model_path=tiny_checkpoints["policy"],
        rewards=[ThinkFormatReward(), MultiObjectMatchReward()],
        image_size=(56, 56),
        group_size=2,
        max_new_tokens=6,
        num_iterations=2,  # a second pass: old log-probs over the two-image prompts too
        micro_batch_size=2,
    )
    data = SocioSegDataModule(
        str(tmp_path / "SocioSeg"), images="map+satellite", val_split=None, test_split=None, on_error="skip"
    )
    trainer = cpu_trainer(max_steps=2)
    trainer.fit(module, datamodule=data)
    record = module.last_step
    prompts, rollouts, total = record.prompts, record.rollouts, record.total_reward
    assert trainer.global_step == 2 and prompts.images_per_prompt == [2, 2]
    assert prompts.image_grid_thw.shape[0] == 4 and len(rollouts) == 4 and bool(total.isfinite().all())
