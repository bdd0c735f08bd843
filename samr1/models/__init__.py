"""Model families the policy can be: the pieces samr1 calls directly (prefix cache, loading, LoRA, sharding,
checkpoint save). Qwen2.5-VL today; a second family plugs in beside it with the same functions."""
