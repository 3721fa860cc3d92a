"""engine (see design.md)."""
