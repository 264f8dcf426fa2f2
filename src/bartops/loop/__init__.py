"""The living loop: simulated listeners against the live stack, round after round."""
