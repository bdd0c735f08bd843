"""Moved to `samr1.tools.tiny`; this name is kept so old imports (and YAML class paths) keep working."""

import sys

import samr1.tools.tiny as _moved

sys.modules[__name__] = _moved
