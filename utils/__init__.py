"""The engine shared by every entry point: config, data, model, training loop, checkpoints, distributed.

Importing the package itself does nothing (no imports): entry points import ``utils.errors`` first, so that Ctrl-C
is one line from their first instruction on (the SpikingJelly warning filter lives in ``models/__init__.py``).
"""
