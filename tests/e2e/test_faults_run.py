"""Faults on the run side: options that take effect, runs that cannot clobber each other, checkpoints that
survive an interrupted write and report corruption, option ranges checked by name (issue 14)."""

from __future__ import annotations

import errno
import io
import re
import shutil
import struct
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from samr1.checkpointing import (
    CorruptCheckpointError,
    SafeCheckpointIO,
    load_checkpoint,
    newest_intact_checkpoint,
)
from samr1.cli import CheckpointOptionError, main
from samr1.run_dir import RunDirectoryError, claim_run_directory

# Optimiser steps: 2 rollout batches x num_iterations 2, a checkpoint every 2 steps. 6 samples in batches of 2
# make epochs of 3 batches, so the last checkpoint lies mid-epoch.
FIT_STEPS = 4


def write_config(path: Path, run_dir: Path, tiny: dict, drop_model: tuple[str, ...] = (), **model) -> str:
    """The demo recipe, shrunk: 56 px shapes, 8 new tokens, CSV logger and checkpoints under `run_dir`."""
    with open("configs/demo.yaml") as f:
        config = yaml.safe_load(f)
    config["trainer"].update(
        max_steps=FIT_STEPS,
        default_root_dir=str(run_dir),
        limit_val_batches=0,
        logger=[
            {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(run_dir), "name": "csv"},
            }
        ],
        callbacks=[
            {
                "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                "init_args": {
                    "dirpath": str(run_dir / "checkpoints"),
                    "save_last": True,
                    "every_n_train_steps": 2,
                },
            }
        ],
    )
    config["model"].update(
        model_path=tiny["policy"],
        sam_checkpoint=tiny["sam_checkpoint"],
        image_size=[56, 56],
        max_new_tokens=8,
        predictions_path=str(run_dir / "test_predictions.jsonl"),
        group_size=4,  # the step and epoch counts below assume 2 iterations per rollout batch of 2 prompts
        num_iterations=2,
        micro_batch_size=8,
    )
    config["model"].update(model)
    for key in drop_model:
        config["model"].pop(key)
    config["data"]["init_args"].update(
        num_train=6, num_val=2, num_test=2, image_size=56, batch_size=2, eval_batch_size=2
    )
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.fixture(scope="module")
def trained_run(tiny_checkpoints, tmp_path_factory) -> Path:
    """One fit of FIT_STEPS optimiser steps through the CLI; tests copy it before changing anything."""
    root = tmp_path_factory.mktemp("trained")
    run_dir = root / "run"
    main(["fit", "--config", write_config(root / "fit.yaml", run_dir, tiny_checkpoints)])
    return run_dir


def copy_run(trained_run: Path, tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    return run_dir


# ------------------------------------------------------------------------------- --ckpt_path and options
def test_ckpt_path_keeps_the_options_the_user_gives(trained_run, tiny_checkpoints, tmp_path):
    config = write_config(tmp_path / "c.yaml", tmp_path, tiny_checkpoints)
    elsewhere = tmp_path / "x.jsonl"
    ckpt = str(trained_run / "checkpoints" / "last.ckpt")
    main(["test", "--config", config, "--ckpt_path", ckpt, "--model.predictions_path", str(elsewhere)])
    assert len(elsewhere.read_text().splitlines()) == 2  # written where the user asked
    assert not (trained_run / "test_predictions.jsonl").exists()  # not where the checkpoint's options say


def test_ckpt_path_refuses_an_option_that_changes_what_the_weights_mean(
    trained_run, tiny_checkpoints, tmp_path
):
    config = write_config(tmp_path / "c.yaml", tmp_path, tiny_checkpoints)
    ckpt = str(trained_run / "checkpoints" / "last.ckpt")
    with pytest.raises(CheckpointOptionError, match=r"model\.lora_rank=4 \(checkpoint: 0\)"):
        main(["test", "--config", config, "--ckpt_path", ckpt, "--model.lora_rank", "4"])


def test_hparams_from_ckpt_fills_only_what_the_user_did_not_set(trained_run, tiny_checkpoints, tmp_path):
    # This config does not set predictions_path: with --hparams_from_ckpt it comes from the checkpoint.
    config = write_config(tmp_path / "c.yaml", tmp_path, tiny_checkpoints, drop_model=("predictions_path",))
    ckpt = str(trained_run / "checkpoints" / "last.ckpt")
    written = trained_run / "test_predictions.jsonl"
    try:
        main(["test", "--config", config, "--ckpt_path", ckpt, "--hparams_from_ckpt", "true"])
        assert len(written.read_text().splitlines()) == 2
    finally:
        written.unlink(missing_ok=True)
        written.with_suffix(".metrics.json").unlink(missing_ok=True)


def test_resumed_fit_trains_at_the_configured_learning_rate(trained_run, tiny_checkpoints, tmp_path):
    run_dir = copy_run(trained_run, tmp_path)
    config = write_config(tmp_path / "c.yaml", run_dir, tiny_checkpoints)
    stored = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    with open("configs/demo.yaml") as f:
        demo_lr = yaml.safe_load(f)["model"]["learning_rate"]
    stored_lrs = [g["lr"] for g in stored["optimizer_states"][0]["param_groups"]]
    assert demo_lr == 2e-4 and stored_lrs == [2e-4, 2e-4]  # the demo recipe's, before the resume changes it
    main(["fit", "--config", config, "--ckpt_path", "last", "--trainer.max_steps", str(FIT_STEPS + 2),
          "--model.learning_rate", "0.5"])  # fmt: skip
    resumed = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == FIT_STEPS + 2
    assert [g["lr"] for g in resumed["optimizer_states"][0]["param_groups"]] == [0.5, 0.5]
    assert resumed["hyper_parameters"]["learning_rate"] == 0.5
    # The resume writes its own file names (the copied run's earlier checkpoint stays): no last-v1.ckpt.
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert names == ["epoch=0-step=4.ckpt", "epoch=0-step=6.ckpt", "last.ckpt"]


# ------------------------------------------------------------------------------- run directories
def test_a_second_fit_into_a_run_directory_is_refused(trained_run, tiny_checkpoints, tmp_path):
    run_dir = copy_run(trained_run, tmp_path)
    before = (run_dir / "csv" / "version_0" / "metrics.csv").read_text()
    config = write_config(tmp_path / "c.yaml", run_dir, tiny_checkpoints)
    with pytest.raises(RunDirectoryError, match=re.escape(f"{run_dir.resolve()} already holds a run (")):
        main(["fit", "--config", config])
    assert (run_dir / "csv" / "version_0" / "metrics.csv").read_text() == before
    assert not (run_dir / "csv" / "version_1").exists()


def test_a_checkpoint_directory_with_checkpoints_is_refused_too(tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "last.ckpt").write_bytes(b"x")
    with pytest.raises(RunDirectoryError, match="last.ckpt"):
        claim_run_directory(tmp_path / "new", [tmp_path / "ckpt"], ckpt_path=None)
    claim_run_directory(tmp_path / "new", [tmp_path / "ckpt"], ckpt_path="last").release()  # resuming it


def test_a_run_directory_in_use_is_refused_even_for_a_resume(tmp_path):
    claim = claim_run_directory(tmp_path, [], ckpt_path=None)
    try:
        with pytest.raises(RunDirectoryError, match="in use by another samr1 fit"):
            claim_run_directory(tmp_path, [], ckpt_path="last")
    finally:
        claim.release()
    claim_run_directory(tmp_path, [], ckpt_path="last").release()


# ------------------------------------------------------------------------------- checkpoints
def test_an_interrupted_checkpoint_write_leaves_the_previous_one_resumable(
    tiny_checkpoints, tmp_path, monkeypatch
):
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", run_dir, tiny_checkpoints)
    real_save = torch.save
    last_writes = []

    def disk_full_on_second_last(obj, f, *args, **kwargs):
        if ".last.ckpt.tmp" in str(getattr(f, "name", "")):
            last_writes.append(1)
            if len(last_writes) == 2:  # the step-4 last.ckpt: half its bytes reach the disk, then ENOSPC
                buffer = io.BytesIO()
                real_save(obj, buffer)
                f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full_on_second_last)
    with pytest.raises(OSError, match="No space left"):
        main(["fit", "--config", config])
    monkeypatch.setattr(torch, "save", real_save)
    checkpoints = run_dir / "checkpoints"
    assert not [p.name for p in checkpoints.iterdir() if ".tmp" in p.name]  # no half file left behind
    assert load_checkpoint(checkpoints / "last.ckpt")["global_step"] == 2  # the previous one, whole
    main(["fit", "--config", config, "--ckpt_path", "last"])
    assert load_checkpoint(checkpoints / "last.ckpt")["global_step"] == FIT_STEPS


def _flip_tensor_bytes(path: Path) -> None:
    """Flip 16 bytes in the middle of the checkpoint's largest tensor record (not a zip header)."""
    with zipfile.ZipFile(path) as archive:
        info = max(archive.infolist(), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
    data[start : start + 16] = bytes(b ^ 0xFF for b in data[start : start + 16])
    path.write_bytes(bytes(data))


def test_flipped_bytes_are_reported_with_the_intact_alternative(trained_run, tiny_checkpoints, tmp_path):
    run_dir = copy_run(trained_run, tmp_path)
    last, intact = run_dir / "checkpoints" / "last.ckpt", run_dir / "checkpoints" / "epoch=0-step=4.ckpt"
    _flip_tensor_bytes(last)
    torch.load(last, weights_only=True)  # torch itself reads it without complaint
    config = write_config(tmp_path / "c.yaml", run_dir, tiny_checkpoints)
    with pytest.raises(CorruptCheckpointError) as err:
        main(["test", "--config", config, "--ckpt_path", str(last)])
    assert str(err.value).startswith(f"checkpoint {last} is corrupt (checksum mismatch")
    assert f"The newest intact checkpoint in {last.parent} is {intact}" in str(err.value)


def test_a_truncated_checkpoint_is_reported_with_its_path(trained_run, tmp_path):
    run_dir = copy_run(trained_run, tmp_path)
    last = run_dir / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(CorruptCheckpointError, match=rf"checkpoint {last} is corrupt \(unreadable: "):
        load_checkpoint(last)
    assert newest_intact_checkpoint(last.parent) == run_dir / "checkpoints" / "epoch=0-step=4.ckpt"
    (run_dir / "checkpoints" / "epoch=0-step=4.ckpt").unlink()
    with pytest.raises(CorruptCheckpointError, match="No intact checkpoint is left in"):
        SafeCheckpointIO().load_checkpoint(last)


def test_export_refuses_a_non_empty_directory(trained_run, tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "config.json").write_text("{}")  # another model lives here
    ckpt = str(trained_run / "checkpoints" / "last.ckpt")
    with pytest.raises(FileExistsError, match=rf"{out} is not empty.*--overwrite"):
        main(["export", ckpt, str(out)])
    assert (out / "config.json").read_text() == "{}"
    main(["export", ckpt, str(out), "--overwrite"])
    assert (out / "model.safetensors").is_file() and (out / "config.json").read_text() != "{}"


# ------------------------------------------------------------------------------- options by name
@pytest.mark.parametrize(
    "option, value, message",
    [
        ("max_new_tokens", 0, "max_new_tokens must be an integer >= 1, got 0"),
        ("image_size", (0, 0), r"image_size must be \[width, height\], positive multiples of 28"),
        ("image_size", (113, 112), r"got \(113, 112\) \(nearest: \[112, 112\]\)"),
        ("top_p", 0.0, r"top_p must lie in \(0, 1\], got 0.0"),
        ("temperature", -1.0, "temperature must be >= 0"),
        ("clip_low", 1.0, r"clip_low must lie in \[0, 1\)"),
        ("group_size", 1, "group_size must be an integer >= 2"),
        ("sam_model_type", "vit_x", "sam_model_type must be one of"),
    ],
)
def test_option_out_of_range_is_named_at_construction(tiny_checkpoints, option, value, message):
    from samr1.modules.module import GRPOModule

    paths = dict(model_path=tiny_checkpoints["policy"], sam_checkpoint=tiny_checkpoints["sam_checkpoint"])
    with pytest.raises(ValueError, match=message):
        GRPOModule(**paths, **{option: value})


def test_fit_at_temperature_zero_is_refused(tiny_checkpoints, tmp_path):
    config = write_config(tmp_path / "c.yaml", tmp_path / "run", tiny_checkpoints, temperature=0.0)
    with pytest.raises(ValueError, match="temperature must be > 0 to fit, got 0.0: GRPO compares"):
        main(["fit", "--config", config])


def test_optimizer_is_not_offered(tiny_checkpoints, tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", tmp_path / "run", tiny_checkpoints)
    with pytest.raises(SystemExit):
        main(["fit", "--config", config, "--optimizer", "SGD"])
    assert "unrecognized arguments: --optimizer sgd" in capsys.readouterr().err.lower()
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    assert "--optimizer" not in capsys.readouterr().out


def test_a_yaml_error_names_the_config_file(tiny_checkpoints, tmp_path, capsys):
    good = write_config(tmp_path / "c.yaml", tmp_path / "run", tiny_checkpoints)
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  group_size: 4\n   lr: [\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", good, "--config", str(bad)])
    assert exit_info.value.code == 2
    assert f"error: config file {bad} is not valid YAML" in capsys.readouterr().err


def test_a_wrong_sam_model_type_gives_a_short_message(tiny_checkpoints):
    from samr1.sam.architectures import load_sam_checkpoint

    with pytest.raises(ValueError) as err:
        load_sam_checkpoint("vit_b", tiny_checkpoints["sam_checkpoint"])
    assert str(err.value) == (
        f"SAM checkpoint {tiny_checkpoints['sam_checkpoint']} does not match sam_model_type 'vit_b': it fits "
        "model_type 'vit_tiny' (known: ['vit_b', 'vit_h', 'vit_l', 'vit_tiny'])"
    )
    assert err.value.__cause__ is None and err.value.__suppress_context__  # no state-dict dump chained


# ------------------------------------------------------------------------------- noise
def test_loggers_count_optimiser_steps(trained_run):
    rows = (trained_run / "csv" / "version_0" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    steps = [int(row.split(",")[header.index("step")]) for row in rows[1:]]
    assert steps == [2, 4]  # as StepPrinter prints them, not rollout batches 0, 1


def test_resume_prints_no_misleading_lightning_warnings(trained_run, tiny_checkpoints, tmp_path, recwarn):
    run_dir = copy_run(trained_run, tmp_path)
    config = write_config(tmp_path / "c.yaml", run_dir, tiny_checkpoints)
    main(["fit", "--config", config, "--ckpt_path", "last", "--trainer.max_steps", str(FIT_STEPS + 2)])
    texts = [str(w.message) for w in recwarn]
    assert not [t for t in texts if "dataloader is" in t or "manual optimization" in t or "anonymous" in t]


def test_wandb_logger_passes_no_anonymous_setting(tmp_path):
    from samr1.loggers import WandbLogger

    assert "anonymous" not in WandbLogger(save_dir=str(tmp_path), offline=True)._wandb_init
