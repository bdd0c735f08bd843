"""`samr1 export CKPT DIR`: a samr1 Lightning checkpoint's policy as a plain Hugging Face directory."""

from __future__ import annotations

from pathlib import Path

from samr1.checkpointing import load_checkpoint
from samr1.models.qwen2_5_vl.checkpoint import save_pretrained


def export_checkpoint(ckpt_path: str | Path, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Load a samr1 Lightning checkpoint (safely, `weights_only=True`, checksum verified) and write its
    policy to `out_dir`.

    A non-empty `out_dir` is refused unless `overwrite` (it may hold another model); files of the same name
    are then replaced, others left in place.
    """
    from samr1.modules.module import GRPOModule

    path, out = Path(ckpt_path), Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(
            f"export directory {out} is not empty; choose an empty or new directory, or pass --overwrite"
        )
    checkpoint = load_checkpoint(path)
    hparams = {k: v for k, v in checkpoint["hyper_parameters"].items() if not k.startswith("_")}
    hparams["sam_checkpoint"] = None  # SAM is not part of the policy
    module = GRPOModule(**hparams)
    module.configure_model()
    module.load_state_dict(checkpoint["state_dict"])
    return save_pretrained(module.policy, module.processor, out)
