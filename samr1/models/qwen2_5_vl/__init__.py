"""Qwen2.5-VL plumbing: shared-prefix forward and KV cache, loading, LoRA, FSDP2 sharding, HF checkpoint save."""
