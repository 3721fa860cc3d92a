"""Training: SFT today, RL next (docs/architecture.md §2.6, docs/training.md)."""
