"""Moved to `samr1.tools.warmup`; this name is kept so old imports (and YAML class paths) keep working."""

import sys

import samr1.tools.warmup as _moved

sys.modules[__name__] = _moved
