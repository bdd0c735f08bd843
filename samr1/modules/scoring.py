"""Moved to `samr1.rewards.combine`; this name is kept so old imports (and YAML class paths) keep working."""

import sys

import samr1.rewards.combine as _moved

sys.modules[__name__] = _moved
