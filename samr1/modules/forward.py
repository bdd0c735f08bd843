"""Moved to `samr1.models.qwen2_5_vl.prefix_cache`; this name is kept so old imports (and YAML class paths) keep working."""

import sys

import samr1.models.qwen2_5_vl.prefix_cache as _moved

sys.modules[__name__] = _moved
