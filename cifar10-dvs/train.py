"""Train Spikingformer-2-256 on CIFAR10-DVS (event frames, the published DVS recipe).

    python scripts/prepare_dvs.py cifar10-dvs --raw RAW --root data/cifar10-dvs      (once)
    python cifar10-dvs/train.py [--config FILE.yml] [--data-dir ROOT] [--key value ...]

Configs: cifar10dvs.yml (T=16) or cifar10dvs_t10.yml (T=10); keys: --help. ``--data-dir`` is the root prepared by
scripts/prepare_dvs.py; frames are integrated once per T and cached there. The run folder gets train_files.txt /
test_files.txt (the source events_np/*.npz of every training and test sample, in order), args.yaml, summary.csv,
log.txt and the checkpoints.

Several processes: torchrun --nproc_per_node=N cifar10-dvs/train.py ... (or python -m torch.distributed.launch ...).
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the repository root, for `models` and `utils`

from utils.errors import run_cli  # noqa: E402  (light; the heavy imports run inside run_cli: Ctrl-C is one line)

DEFAULT_CONFIG = os.path.join(HERE, 'cifar10dvs.yml')


def main(argv=None):
    from utils.training.main import train_main
    return train_main(argv, DEFAULT_CONFIG)


if __name__ == '__main__':
    run_cli(main)
