"""Batch evaluation: a reserved room, filled by later work (docs/architecture.md §2.7)."""
