"""Evaluate a DVS128 Gesture checkpoint on the test split.

    python dvs128-gesture/test.py --checkpoint PATH [--data-dir ROOT] [--output DIR] [--key value ...]

A checkpoint written by train.py brings its own config (T, model, data); any other uses dvs128gesture.yml unless
--config
says otherwise. Prints top-1, top-5 and the loss, and writes results.json (with ``samples``, the number of
evaluated samples) into --output.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the repository root, for `models` and `utils`

from utils.errors import run_cli  # noqa: E402  (light; the heavy imports run inside run_cli: Ctrl-C is one line)

DEFAULT_CONFIG = os.path.join(HERE, 'dvs128gesture.yml')


def main(argv=None):
    from utils.training.main import test_main
    return test_main(argv, DEFAULT_CONFIG)


if __name__ == '__main__':
    run_cli(main)
