"""Agentic RL (GRPO with TAURA) on the episode driver and the paged engine (docs/training.md §10)."""
