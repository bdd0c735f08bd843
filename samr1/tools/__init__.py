"""Offline tools outside the training core (tiny checkpoints, supervised warm-up, export); the CLI and tests
import them, the training modules never do."""
