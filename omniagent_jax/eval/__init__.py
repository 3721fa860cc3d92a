"""eval (see design.md)."""
