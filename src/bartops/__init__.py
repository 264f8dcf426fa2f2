"""bartops."""
