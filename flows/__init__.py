"""Thin Prefect flows that wire the pure functions of src/bartops."""
