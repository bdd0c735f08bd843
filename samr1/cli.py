"""`samr1`: LightningCLI (fit / validate / test / predict) plus `samr1 tiny` and `samr1 prepare`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from lightning.pytorch.cli import LightningCLI

from samr1.datamodules.base import SegDataModule
from samr1.modules.policy import GRPOModule


class SamR1CLI(LightningCLI):
    """LightningCLI over `GRPOModule` and any `SegDataModule` (chosen by `data.class_path`)."""

    def before_fit(self) -> None:
        resume_wandb_run(self.config_init[self.subcommand].get("ckpt_path"), self.trainer)


def resume_wandb_run(ckpt_path: str | None, trainer) -> None:
    """Hand a resumed checkpoint's wandb run id to samr1's WandbLogger, so the run's curves continue."""
    if not ckpt_path:
        return
    from samr1.loggers import WandbLogger

    loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
    if not loggers:
        return
    path = ckpt_path
    if ckpt_path in ("last", "best"):
        callback = trainer.checkpoint_callback
        path = getattr(callback, f"{ckpt_path}_model_path", None) or (
            str(Path(callback.dirpath) / "last.ckpt") if callback is not None and callback.dirpath else None
        )
    if not path or not Path(path).is_file():
        return
    run_id = torch.load(path, map_location="cpu", weights_only=True).get("samr1_wandb_run_id")
    if run_id:
        loggers[0].resume_run(run_id)


def tiny_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="samr1 tiny", description="Write tiny random Qwen2.5-VL and SAM checkpoints (offline, seeded)."
    )
    parser.add_argument("out_dir", help="directory to write (qwen2_5_vl/, sam_vit_tiny.pth, manifest.json)")
    parser.add_argument("--size", default="tiny", choices=["tiny", "small"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--warmup-steps",
        type=int,
        default=0,
        help="supervised steps on synthetic-shape answers so the policy writes the answer format (demo: 100)",
    )
    parser.add_argument("--warmup-image-size", type=int, default=112)
    args = parser.parse_args(argv)
    from samr1.tools.tiny import write_tiny_checkpoints

    manifest = write_tiny_checkpoints(
        args.out_dir,
        args.size,
        args.seed,
        warmup_steps=args.warmup_steps,
        warmup_image_size=args.warmup_image_size,
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
    args = parser.parse_args(argv)
    from samr1.tools.export import export_checkpoint

    print(f"wrote {export_checkpoint(args.ckpt_path, args.out_dir)}")


COMMANDS = {"tiny": tiny_main, "prepare": prepare_main, "export": export_main}


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
