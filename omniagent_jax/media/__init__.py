"""media (see design.md)."""
