"""The `samr1` command: configs parse, bad input fails at start naming what is wrong."""

from __future__ import annotations

import pytest
import yaml

from samr1.cli import main


def _demo_config(tmp_path, tiny_checkpoints, **model) -> str:
    with open("configs/demo.yaml") as f:
        config = yaml.safe_load(f)
    config["model"].update(
        model_path=tiny_checkpoints["policy"], sam_checkpoint=tiny_checkpoints["sam_checkpoint"]
    )
    config["model"].update(model)
    config["trainer"]["default_root_dir"] = str(tmp_path)
    config["trainer"]["logger"] = False
    config["trainer"]["callbacks"] = []
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_print_config_shows_the_whole_recipe(tmp_path, tiny_checkpoints, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", _demo_config(tmp_path, tiny_checkpoints), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["group_size"] == 8
    assert printed["model"]["clip_high"] == 0.3
    assert [r["class_path"] for r in printed["model"]["rewards"]] == [
        "samr1.rewards.ThinkFormatReward",
        "samr1.rewards.AnswerFormatReward",
        "samr1.rewards.MaskIoUReward",
    ]
    assert printed["data"]["class_path"] == "samr1.datamodules.SyntheticShapesDataModule"


def test_unknown_key_is_named(tmp_path, tiny_checkpoints, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", _demo_config(tmp_path, tiny_checkpoints), "--model.group_sise", "8"])
    assert "group_sise" in capsys.readouterr().err


def test_wrong_type_is_named(tmp_path, tiny_checkpoints, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", _demo_config(tmp_path, tiny_checkpoints), "--model.clip_high", "wide"])
    assert "clip_high" in capsys.readouterr().err


def test_group_size_below_two_is_refused(tmp_path, tiny_checkpoints):
    with pytest.raises(ValueError, match="group_size"):
        main(["fit", "--config", _demo_config(tmp_path, tiny_checkpoints, group_size=1)])


def test_missing_model_path_is_named(tmp_path, tiny_checkpoints):
    missing = str(tmp_path / "no_such_model")
    with pytest.raises(FileNotFoundError, match="no_such_model"):
        main(["fit", "--config", _demo_config(tmp_path, tiny_checkpoints), "--model.model_path", missing])


def test_missing_sam_checkpoint_is_named(tmp_path, tiny_checkpoints):
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        main(["fit", "--config", _demo_config(tmp_path, tiny_checkpoints, sam_checkpoint="nowhere.pth")])


def test_fit_then_test_writes_checkpoint_and_predictions(tmp_path, tiny_checkpoints, capsys):
    config = _demo_config(
        tmp_path, tiny_checkpoints, predictions_path=str(tmp_path / "pred.jsonl"), max_new_tokens=8
    )
    main(
        [
            "fit",
            "--config",
            config,
            "--trainer.max_steps",
            "4",
            "--trainer.callbacks+=ModelCheckpoint",
            f"--trainer.callbacks.dirpath={tmp_path / 'ckpt'}",
            "--trainer.callbacks.save_last=true",
        ]
    )
    assert (tmp_path / "ckpt" / "last.ckpt").is_file()
    main(["test", "--config", config, "--ckpt_path", str(tmp_path / "ckpt" / "last.ckpt")])
    lines = (tmp_path / "pred.jsonl").read_text().splitlines()
    with open(config) as f:
        num_test = yaml.safe_load(f)["data"]["init_args"]["num_test"]
    assert num_test == 128 and len(lines) == num_test  # every test sample, none dropped
    out = capsys.readouterr().out
    assert "giou" in out and "parse_failure_rate" in out


def test_fit_help_documents_every_module_argument(capsys, monkeypatch):
    import inspect
    import re

    from samr1.modules.module import GRPOModule

    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    text = capsys.readouterr().out
    undocumented = []
    for name in list(inspect.signature(GRPOModule.__init__).parameters)[1:]:
        match = re.search(rf"\n  --model\.{name}\b[^\n]*\n?(.*?)(?=\n  --|\Z)", text, re.S)
        entry = "" if match is None else re.sub(r"\(type:.*", "", match.group(0), flags=re.S)
        help_text = entry.split(maxsplit=2)[2:] if entry.strip() else []
        if not help_text or not help_text[0].strip():
            undocumented.append(name)
    assert undocumented == [], f"samr1 fit --help has no help text for {undocumented}"


# Every shipped config parses with `--print_config` (subcommand, the configs it is layered on, the file).
_BASES = {
    "configs/data/": ("test", ["configs/demo.yaml"]),
    "configs/rewards/": ("fit", ["configs/demo.yaml"]),
    "configs/strategy/": ("fit", ["configs/demo.yaml"]),
    "configs/eval/": ("test", ["configs/data/reasonseg_val.yaml"]),  # the eval config comes first
    "configs/socioseg_eval.yaml": ("test", ["configs/demo.yaml", "configs/data/socioseg_test.yaml"]),
    "configs/predict.yaml": ("predict", []),
}


def _layers(path: str) -> tuple[str, list[str]]:
    for prefix, (command, bases) in _BASES.items():
        if path.startswith(prefix):
            return command, ([path, *bases] if prefix == "configs/eval/" else [*bases, path])
    return "fit", [path]


def _print_config(capsys, path: str) -> dict:
    command, layers = _layers(path)
    args = [command]
    for layer in layers:
        args += ["--config", layer]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--print_config"])
    assert exit_info.value.code == 0, path
    return yaml.safe_load(capsys.readouterr().out)


def test_every_shipped_config_parses(capsys):
    from pathlib import Path

    paths = sorted(str(p) for p in Path("configs").rglob("*.yaml"))
    assert len(paths) == 27
    printed = {path: _print_config(capsys, path) for path in paths}
    segzero = printed["configs/segzero_qwen2_5_vl_7b.yaml"]["model"]
    assert (segzero["prompt_template"], segzero["max_new_tokens"], segzero["num_iterations"]) == (
        "segzero",
        1300,
        1,
    )
    assert (segzero["clip_low"], segzero["clip_high"], segzero["entropy_coef"]) == (0.2, 0.2, 0.001)
    assert (segzero["kl_coef"], segzero["kl_clamp"], segzero["aggregation"]) == (0.005, 10.0, "sequence")
    assert segzero["mini_batch_size"] is None and len(segzero["rewards"]) == 5
    samr1 = printed["configs/samr1_qwen2_5_vl_7b.yaml"]["model"]
    assert (samr1["sam_backend"], samr1["sam_checkpoint"]) == ("sam2", "checkpoints/sam2-hiera-large")
    assert (samr1["max_new_tokens"], samr1["mask_selection"], samr1["prompt_template"]) == (
        1300,
        "best",
        "segzero",
    )
    for name, prompt, tokens, multi in (
        ("segzero_7b", "segzero", 1024, False),
        ("visionreasoner_7b", "visionreasoner", 2048, True),
    ):
        model = printed[f"configs/eval/{name}.yaml"]["model"]
        assert (model["prompt_template"], model["eval_max_new_tokens"], model["eval_multi_object"]) == (
            prompt,
            tokens,
            multi,
        )
        assert (model["eval_repetition_penalty"], model["image_resample"], model["sam_backend"]) == (
            None,
            "bilinear",
            "sam2",
        )
    ood = printed["configs/data/socioseg_ood.yaml"]
    assert ood["data"]["init_args"]["test_split"] == "ood" and ood["model"]["eval_multi_object"] is True
