"""Moved to `samr1.modules.module`; `samr1.modules.policy.GRPOModule` stays importable (and as a YAML
class path)."""

import sys

import samr1.modules.module as _moved

sys.modules[__name__] = _moved
