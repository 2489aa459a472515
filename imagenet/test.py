"""Evaluate a ImageNet checkpoint on the validation split.

    python imagenet/test.py --checkpoint PATH [--use-ema] [--output DIR] [--key value ...]

A checkpoint written by train.py brings its own config; a published one uses imagenet.yml unless
--config says otherwise.
Prints top-1, top-5 and the loss, and writes results.json into --output.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the repository root, for `models` and `utils`

from utils.errors import run_cli  # noqa: E402
from utils.main import test_main  # noqa: E402

DEFAULT_CONFIG = os.path.join(HERE, 'imagenet.yml')

if __name__ == '__main__':
    run_cli(lambda argv: test_main(argv, DEFAULT_CONFIG))
