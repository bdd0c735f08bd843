"""Moved to `samr1.answer` (shared by rewards, evaluation and callbacks like `samr1.sample`); this name is
kept, so `samr1.rewards.parsing.parse_answer` and `Answer` still import."""

import sys

import samr1.answer as _moved

sys.modules[__name__] = _moved
