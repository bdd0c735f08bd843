"""`samr1`: LightningCLI (fit / validate / test / predict) plus `samr1 tiny`, `samr1 prepare` and `samr1 export`.

Two rules that differ from a plain LightningCLI:

- `--ckpt_path FILE` loads weights (and, in fit, the optimiser and loop state); it does not change an option.
  The model is built from the user's config: YAML files, command line, then defaults. With
  `--hparams_from_ckpt true` the options the user did not set come from the checkpoint's hyper-parameters
  instead of the defaults. Either way, options that decide what the stored weights mean (`WEIGHT_OPTIONS`,
  and in fit `RESUME_OPTIONS`) must equal the checkpoint's, or the run is refused naming each difference.
- A fit claims its run directory (see `samr1/run_dir.py`): a directory that already holds a run is refused
  unless the fit resumes it.

Checkpoints are written and read through `SafeCheckpointIO` (atomic, checksummed; `samr1/checkpointing.py`).
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import yaml
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from samr1.checkpointing import SafeCheckpointIO, read_checkpoint_metadata
from samr1.datamodules.base import SegDataModule
from samr1.modules.module import GRPOModule
from samr1.run_dir import RESUME_WORDS, claim_run_directory

# Options whose value decides what the checkpoint's weights mean: a different value cannot load them as
# trained (different adapter shapes or scaling).
WEIGHT_OPTIONS = ("lora_rank", "lora_alpha")
# In fit the optimiser state is restored too: these change which parameters it holds.
RESUME_OPTIONS = ("freeze_vision",)


class CheckpointOptionError(ValueError):
    """A user option that cannot take effect with the given checkpoint."""


class SamR1CLI(LightningCLI):
    """LightningCLI over `GRPOModule` and any `SegDataModule` (chosen by `data.class_path`).

    samr1 configures its own optimiser (AdamW with decoupled weight decay, `model.learning_rate`,
    `model.lr_schedule`, ...), so LightningCLI's `--optimizer` / `--lr_scheduler` are not offered.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("auto_configure_optimizers", False)
        quiet_known_warnings()
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--hparams_from_ckpt",
            type=bool,
            default=False,
            help="with --ckpt_path FILE: model options you do not set come from the checkpoint's "
            "hyper-parameters instead of their defaults (options you set always win)",
        )

    def parse_arguments(self, parser, args) -> None:
        self._argv = list(sys.argv[1:] if args is None else args) if not isinstance(args, dict) else []
        check_config_files(self._argv)
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        """Replaces LightningCLI's (which overwrites the user's model options with the checkpoint's)."""
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        ckpt_path = config.get("ckpt_path")
        if not ckpt_path or not Path(ckpt_path).is_file():
            if config.get("hparams_from_ckpt"):
                raise CheckpointOptionError(
                    f"--hparams_from_ckpt true needs --ckpt_path to name a checkpoint file, got {ckpt_path!r}"
                )
            return
        saved = checkpoint_options(read_checkpoint_metadata(ckpt_path))
        if config.get("hparams_from_ckpt"):
            given = user_set_model_options(self._argv, config["model"].as_dict())
            taken = {k: v for k, v in saved.items() if k in config["model"] and k not in given}
            self.config = self.parser.parse_object({subcommand: {"model": taken}}, self.config)
        check_checkpoint_options(ckpt_path, saved, self.config[subcommand]["model"].as_dict(), subcommand)

    def instantiate_trainer(self, **kwargs: Any):
        trainer = super().instantiate_trainer(**kwargs)
        # Replace only Lightning's default writer; a CheckpointIO chosen in the config is kept.
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = SafeCheckpointIO()
        return trainer

    def fit(self, model, datamodule=None, ckpt_path=None, **kwargs) -> None:
        trainer = self.trainer
        resolved = resolve_ckpt_path(ckpt_path, trainer)
        if ckpt_path in RESUME_WORDS and resolved is not None:  # the file is known only now
            saved = checkpoint_options(read_checkpoint_metadata(resolved))
            check_checkpoint_options(resolved, saved, dict(model.hparams), "fit")
        claim = None
        if rank_zero_only.rank == 0:  # DDP children re-run this command; the launching process claims
            checkpoint_dirs = [c.dirpath for c in trainer.checkpoint_callbacks if getattr(c, "dirpath", None)]
            # Lightning's own default (the current directory) versions its logs itself: not claimed.
            run_dir = (
                trainer.default_root_dir
                if self.config[self.subcommand]["trainer"].get("default_root_dir")
                else None
            )
            claim = claim_run_directory(run_dir, checkpoint_dirs, ckpt_path, ["samr1", *self._argv])
        for callback in trainer.checkpoint_callbacks:
            # The directory belongs to this run (claimed above): its file names are this run's, so a
            # resume overwrites last.ckpt instead of writing last-v1.ckpt beside it (which it would do after
            # the run directory moved, as the stored last_model_path no longer matches).
            if hasattr(callback, "_enable_version_counter"):
                callback._enable_version_counter = False
        try:
            resume_wandb_run(resolved, trainer)
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, **kwargs)
        finally:
            if claim is not None:
                claim.release()


def check_config_files(argv: list[str]) -> None:
    """Exit with the file's name when a YAML/JSON file named on the command line does not parse."""
    for word in argv:
        value = word.split("=", 1)[1] if word.startswith("--") and "=" in word else word
        if not value.endswith((".yaml", ".yml", ".json")) or not Path(value).is_file():
            continue
        try:
            with open(value) as stream:  # a stream, so the error's position names the file
                yaml.safe_load(stream)
        except yaml.YAMLError as err:
            sys.stderr.write(f"error: config file {value} is not valid YAML: {err}\n")
            raise SystemExit(2) from None


def checkpoint_options(checkpoint: dict) -> dict[str, Any]:
    """The GRPOModule options stored in a checkpoint (Lightning's own entries left out)."""
    saved = dict(checkpoint.get("hyper_parameters") or {})
    return {k: v for k, v in saved.items() if not k.startswith("_")}


def check_checkpoint_options(ckpt_path, saved: dict, options: dict, subcommand: str) -> None:
    """Refuse options that differ from the checkpoint's where a difference cannot take effect."""
    keys = WEIGHT_OPTIONS + (RESUME_OPTIONS if subcommand == "fit" else ())
    conflicts = [k for k in keys if k in saved and k in options and _plain(saved[k]) != _plain(options[k])]
    if conflicts:
        lines = ", ".join(f"model.{k}={options[k]!r} (checkpoint: {saved[k]!r})" for k in conflicts)
        raise CheckpointOptionError(
            f"--ckpt_path {ckpt_path} cannot be used with {lines}: the checkpoint's weights"
            f"{' and optimiser state' if subcommand == 'fit' else ''} were made with the checkpoint's values. "
            "Set them to the checkpoint's values, or drop them and pass --hparams_from_ckpt true."
        )


def user_set_model_options(argv: list[str], options: dict) -> set[str]:
    """Model options the user set: named on the command line or in a config file, or not at their default."""
    given: set[str] = set()
    defaults = {
        k: p.default for k, p in inspect.signature(GRPOModule.__init__).parameters.items() if k != "self"
    }
    given |= {k for k, v in options.items() if k in defaults and _plain(v) != _plain(defaults[k])}
    for index, word in enumerate(argv):
        if word.startswith("--model."):
            given.add(word[len("--model.") :].split("=", 1)[0].split(".", 1)[0])
        elif word in ("--config", "-c", "--model") or word.startswith(("--config=", "--model=")):
            value = (
                word.split("=", 1)[1] if "=" in word else (argv[index + 1] if index + 1 < len(argv) else "")
            )
            given |= _model_keys(value, whole_model=word.startswith("--model"))
    return given


def _model_keys(value: str, whole_model: bool) -> set[str]:
    try:
        loaded = yaml.safe_load(Path(value).read_text() if Path(value).is_file() else value)
    except (OSError, yaml.YAMLError):
        return set()
    if not isinstance(loaded, dict):
        return set()
    model = loaded if whole_model else loaded.get("model")
    if not isinstance(model, dict):
        return set()
    return set(model.get("init_args", model))


def _plain(value):
    """Lists for tuples, recursively: a YAML list and a Python tuple of the same items compare equal."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def resolve_ckpt_path(ckpt_path: str | None, trainer) -> str | None:
    """The checkpoint file `ckpt_path` names ('last' / 'best': the checkpoint callback's), or None."""
    if not ckpt_path:
        return None
    path = ckpt_path
    if ckpt_path in ("last", "best"):
        callback = trainer.checkpoint_callback
        path = getattr(callback, f"{ckpt_path}_model_path", None) or (
            str(Path(callback.dirpath) / "last.ckpt") if callback is not None and callback.dirpath else None
        )
    return path if path and Path(path).is_file() else None


def resume_wandb_run(ckpt_path: str | None, trainer) -> None:
    """Hand a resumed checkpoint's wandb run id to samr1's WandbLogger, so the run's curves continue."""
    from samr1.loggers import WandbLogger

    loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
    path = resolve_ckpt_path(ckpt_path, trainer)
    if not loggers or path is None:
        return
    run_id = read_checkpoint_metadata(path).get("samr1_wandb_run_id")
    if run_id:
        loggers[0].resume_run(run_id)


def quiet_known_warnings() -> None:
    """Silence three Lightning warnings that are wrong for samr1 runs, and nothing else."""
    # samr1 checkpoints after the whole GRPO step (all optimiser steps of the rollout batch): that state is
    # what an exact resume needs, and the pre-optimisation copy the warning asks for would be wrong here.
    warnings.filterwarnings(
        "ignore", message="Using ModelCheckpoint with manual optimization and every_n_train_steps"
    )
    # SegDataModule's ResumableSampler skips the batches a resumed epoch already consumed (read from the
    # restored loop progress; tests/test_resume.py checks losses equal an uninterrupted run's), which
    # Lightning's check for a `state_dict` on the DataLoader cannot see.
    warnings.filterwarnings(
        "ignore",
        message="You're resuming from a checkpoint that ended before the epoch ended and your dataloader",
    )
    # `samr1 fit` refuses a fresh run into a checkpoint directory that holds checkpoints (run_dir.py), so a
    # non-empty one here is the run being resumed.
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")


def tiny_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="samr1 tiny", description="Write tiny random Qwen2.5-VL and SAM checkpoints (offline, seeded)."
    )
    parser.add_argument("out_dir", help="directory to write (qwen2_5_vl/, sam_vit_tiny.pth, manifest.json)")
    parser.add_argument("--size", default="tiny", choices=["tiny", "demo", "small"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--warmup-steps",
        type=int,
        default=0,
        help="supervised steps on synthetic-shape answers so the policy writes the answer format (the demo's: see the Makefile)",
    )
    parser.add_argument("--warmup-image-size", type=int, default=112)
    parser.add_argument("--warmup-lr", type=float, default=3e-3, help="the warm-up's learning rate (AdamW)")
    parser.add_argument("--warmup-batch-size", type=int, default=16, help="answers per warm-up step")
    parser.add_argument(
        "--warmup-decay-steps",
        type=int,
        default=0,
        help="the last this many warm-up steps lower the learning rate linearly towards 0 (0: constant)",
    )
    parser.add_argument(
        "--warmup-other-shape-rate",
        type=float,
        default=0.0,
        help="probability that a warm-up answer targets another shape of the image than the queried one",
    )
    parser.add_argument(
        "--warmup-single-shape-steps",
        type=int,
        default=0,
        help="the first this many warm-up steps show one shape per image (a curriculum: where, then which)",
    )
    parser.add_argument(
        "--warmup-prompt", default="samr1", help="the warm-up's prompt_template (GRPO must use the same one)"
    )
    parser.add_argument(
        "--sam-steps",
        type=int,
        default=0,
        help="train the tiny SAM on synthetic shapes for this many steps (demo: 600; 0 keeps it random)",
    )
    parser.add_argument(
        "--sequential",
        action="store_true",
        help="train the SAM first in this process, not beside the warm-up in a second one (one thread each)",
    )
    args = parser.parse_args(argv)
    from samr1.tools.tiny import write_tiny_checkpoints

    manifest = write_tiny_checkpoints(
        args.out_dir,
        args.size,
        args.seed,
        warmup_steps=args.warmup_steps,
        warmup_image_size=args.warmup_image_size,
        sam_steps=args.sam_steps,
        warmup_prompt=args.warmup_prompt,
        warmup_lr=args.warmup_lr,
        warmup_batch_size=args.warmup_batch_size,
        warmup_decay_steps=args.warmup_decay_steps,
        warmup_other_shape_rate=args.warmup_other_shape_rate,
        warmup_single_shape_steps=args.warmup_single_shape_steps,
        parallel=not args.sequential,
    )
    print(json.dumps(manifest, indent=2))


def prepare_main(argv: list[str]) -> None:
    from samr1.datamodules.prepare import main as prepare

    prepare(argv)


def export_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="samr1 export",
        description="Write a trained policy from a samr1 checkpoint as a Hugging Face directory (LoRA merged).",
    )
    parser.add_argument(
        "ckpt_path", help="a checkpoint written by `samr1 fit` (e.g. runs/x/checkpoints/last.ckpt)"
    )
    parser.add_argument(
        "out_dir", help="directory to write; loads with Qwen2_5_VLForConditionalGeneration.from_pretrained"
    )
    parser.add_argument("--overwrite", action="store_true", help="write into out_dir even if it is not empty")
    args = parser.parse_args(argv)
    from samr1.tools.export import export_checkpoint

    print(f"wrote {export_checkpoint(args.ckpt_path, args.out_dir, overwrite=args.overwrite)}")


def report_main(argv: list[str]) -> None:
    from samr1.tools.demo_report import main as report

    report(argv)


COMMANDS = {"tiny": tiny_main, "prepare": prepare_main, "export": export_main, "report": report_main}


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `samr1` console script; `argv` (default: the command line) for use from Python."""
    words = sys.argv[1:] if argv is None else argv
    if words and words[0] in COMMANDS:
        COMMANDS[words[0]](words[1:])
        return
    SamR1CLI(
        GRPOModule,
        SegDataModule,
        subclass_mode_data=True,
        args=argv,
        save_config_kwargs={"overwrite": True},
    )


if __name__ == "__main__":
    main()
