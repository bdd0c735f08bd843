"""`samr1 export CKPT DIR`: a samr1 Lightning checkpoint's policy as a plain Hugging Face directory."""

from __future__ import annotations

from pathlib import Path

import torch

from samr1.models.qwen2_5_vl.checkpoint import save_pretrained


def export_checkpoint(ckpt_path: str | Path, out_dir: str | Path) -> Path:
    """Load a samr1 Lightning checkpoint (safely, `weights_only=True`) and write its policy to `out_dir`."""
    from samr1.modules.module import GRPOModule

    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    hparams = {k: v for k, v in checkpoint["hyper_parameters"].items() if not k.startswith("_")}
    hparams["sam_checkpoint"] = None  # SAM is not part of the policy
    module = GRPOModule(**hparams)
    module.configure_model()
    module.load_state_dict(checkpoint["state_dict"])
    return save_pretrained(module.policy, module.processor, out_dir)
