"""The training loop and its processes."""
