"""Callbacks: terminal step printing (and, with wandb, rollout tables)."""

from samr1.callbacks.printing import StepPrinter

__all__ = ["StepPrinter"]
