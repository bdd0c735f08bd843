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
    assert printed["model"]["group_size"] == 4
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
    assert len(lines) == 16  # every test sample, none dropped
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
