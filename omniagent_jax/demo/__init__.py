"""demo (see design.md)."""
