"""The loader options are declared once (SegDataModule) and still shown, typed and documented, under every DataModule."""

from __future__ import annotations

import inspect

import pytest
import yaml
from jsonargparse import ArgumentParser

from samr1.cli import main
from samr1.datamodules import (
    ImageQueryDataModule,
    JsonlSegDataModule,
    ReasonSegDataModule,
    RefCOCODataModule,
    SegDataModule,
    SocioSegDataModule,
    SyntheticShapesDataModule,
)

LOADER = {"batch_size": "int", "eval_batch_size": "int", "num_workers": "int", "seed": "int"}
SPLITS = ("train_split", "val_split", "test_split")
MODULES = [
    JsonlSegDataModule,
    ReasonSegDataModule,
    RefCOCODataModule,
    SocioSegDataModule,
    SyntheticShapesDataModule,
    ImageQueryDataModule,
]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_loader_options_are_declared_once_and_shown_everywhere(module):
    own = inspect.signature(module.__init__).parameters
    for name in ("num_workers", "seed", "on_error"):  # only SegDataModule declares them
        assert name not in own, f"{module.__name__} re-declares {name}"
    parser = ArgumentParser()
    parser.add_class_arguments(module, "data")
    actions = {action.dest: action for action in parser._actions}
    text = " ".join(parser.format_help().split())  # help lines unwrapped
    for name, type_name in LOADER.items():
        assert actions[f"data.{name}"].help, name
        shown = text.split(f"--data.{name} {name.upper()} ")[-1]  # the option's help entry (after the usage)
        assert shown.startswith(" ".join(actions[f"data.{name}"].help.split())), name
        assert f"(type: {type_name}, default:" in shown[:300], name
    assert actions["data.on_error"].metavar == "{error,skip}" and actions["data.on_error"].default == "error"
    has_splits = module not in (JsonlSegDataModule, ImageQueryDataModule)  # they derive their splits
    assert all((f"data.{split}" in actions) == has_splits for split in SPLITS)


def test_print_config_lists_the_loader_options_under_data(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "configs/demo.yaml", "--print_config"])
    assert exit_info.value.code == 0
    data = yaml.safe_load(capsys.readouterr().out)["data"]["init_args"]
    assert {k: data[k] for k in ("batch_size", "eval_batch_size", "num_workers", "seed", "on_error")} == {
        "batch_size": 16,
        "eval_batch_size": 16,
        "num_workers": 0,
        "seed": 0,
        "on_error": "error",
    }
    assert (data["num_train"], data["train_split"]) == (4096, "train")  # its own options and the splits


def test_options_reach_the_base_and_bad_values_are_named():
    data = ReasonSegDataModule(
        root="r", batch_size=3, eval_batch_size=5, num_workers=1, seed=7, on_error="skip"
    )
    assert (data.batch_size, data.eval_batch_size, data.num_workers, data.seed, data.on_error) == (
        3,
        5,
        1,
        7,
        "skip",
    )
    predict = ImageQueryDataModule.__init__
    assert (
        inspect.signature(predict).parameters["eval_batch_size"].default == 1
    )  # predict reads one at a time
    with pytest.raises(ValueError, match="data.batch_size must be a positive integer, got 0"):
        SyntheticShapesDataModule(batch_size=0)
    with pytest.raises(ValueError, match="on_error must be 'error' or 'skip', got 'ignore'"):
        SegDataModule(on_error="ignore")
