"""Callbacks: terminal step printing, W&B rollout/validation tables, and `samr1 predict`'s file writer."""

from samr1.callbacks.prediction_writer import PredictionWriter
from samr1.callbacks.printing import StepPrinter
from samr1.callbacks.wandb_logging import RolloutTableCallback

__all__ = ["PredictionWriter", "RolloutTableCallback", "StepPrinter"]
