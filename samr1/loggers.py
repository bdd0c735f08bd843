"""Weights & Biases logging that needs no account: offline unless the user has logged in."""

from __future__ import annotations

import os
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger


def wandb_logged_in() -> bool:
    """True when wandb has credentials (WANDB_API_KEY, or `wandb login`'s entry in ~/.netrc)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


class WandbLogger(_LightningWandbLogger):
    """Lightning's WandbLogger with `offline=None` meaning: online when logged in, else offline.

    Offline runs are written under `save_dir/wandb/` and can be uploaded later with `wandb sync`. On
    `samr1 fit --ckpt_path`, the CLI hands the checkpoint's run id to this logger, so the run continues.
    """

    def __init__(
        self,
        project: str = "samr1",
        name: str | None = None,
        save_dir: str = "runs",
        offline: bool | None = None,
        log_model: bool = False,
        **kwargs,
    ) -> None:
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        offline = (not wandb_logged_in()) if offline is None else offline
        super().__init__(
            project=project, name=name, save_dir=save_dir, offline=offline, log_model=log_model, **kwargs
        )
        # Lightning passes anonymous=None unless asked; recent wandb warns (twice) about any value given.
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)

    def resume_run(self, run_id: str) -> None:
        """Continue the wandb run `run_id` (call before the run starts)."""
        self._id = run_id
        self._wandb_init.update(id=run_id, resume="allow")
