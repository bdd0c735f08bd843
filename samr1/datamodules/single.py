"""Moved to `samr1.datamodules.image_query`; this name is kept so old imports (and YAML class paths) keep working."""

import sys

import samr1.datamodules.image_query as _moved

sys.modules[__name__] = _moved
