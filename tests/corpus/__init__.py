"""Committed test corpora (malformed impression batches with their expected verdicts)."""
