"""Operating the local stack: background services of the embedded default."""
