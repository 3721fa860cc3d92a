"""agent (see design.md)."""
