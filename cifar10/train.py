"""Train Spikingformer on CIFAR-10/100 (and the quick start's digits).

    python cifar10/train.py [--config FILE.yml] [--key value ...]     (default cifar10.yml; keys: --help)

Several processes: torchrun --nproc_per_node=N cifar10/train.py ... (or python -m torch.distributed.launch ...).
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the repository root, for `models` and `utils`

from utils.errors import run_cli  # noqa: E402  (light; the heavy imports run inside run_cli: Ctrl-C is one line)

DEFAULT_CONFIG = os.path.join(HERE, 'cifar10.yml')


def main(argv=None):
    from utils.training.main import train_main
    return train_main(argv, DEFAULT_CONFIG)


if __name__ == '__main__':
    run_cli(main)
