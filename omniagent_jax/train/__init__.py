"""train (see design.md)."""
