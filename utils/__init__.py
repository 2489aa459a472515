"""The engine shared by every entry point: config, data, model, training loop, checkpoints, distributed."""
