"""Split into `samr1.models.qwen2_5_vl.{lora,checkpoint}` and `samr1.tools.export`; kept for old imports."""

from samr1.models.qwen2_5_vl.checkpoint import save_pretrained
from samr1.models.qwen2_5_vl.lora import LANGUAGE_LORA_TARGETS, add_lora, is_peft
from samr1.tools.export import export_checkpoint

__all__ = ["LANGUAGE_LORA_TARGETS", "add_lora", "export_checkpoint", "is_peft", "save_pretrained"]
