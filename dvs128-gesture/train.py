"""Train Spikingformer-2-256 on DVS128 Gesture (event frames, the published DVS recipe).

    python scripts/prepare_dvs.py dvs128-gesture --raw RAW --root data/dvs128-gesture      (once)
    python dvs128-gesture/train.py [--config FILE.yml] [--data-dir ROOT] [--key value ...]

Configs: dvs128gesture.yml (T=16) or dvs128gesture_t10.yml (T=10); keys: --help. ``--data-dir`` is the root prepared
by scripts/prepare_dvs.py; frames are integrated once per T and cached there. The run folder gets train_files.txt /
test_files.txt (the source events_np/*.npz of every training and test sample, in order), args.yaml, summary.csv,
log.txt and the checkpoints.

Several processes: torchrun --nproc_per_node=N dvs128-gesture/train.py ... (or python -m torch.distributed.launch ...).
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the repository root, for `models` and `utils`

from utils.errors import run_cli  # noqa: E402  (light; the heavy imports run inside run_cli: Ctrl-C is one line)

DEFAULT_CONFIG = os.path.join(HERE, 'dvs128gesture.yml')


def main(argv=None):
    from utils.training.main import train_main
    return train_main(argv, DEFAULT_CONFIG)


if __name__ == '__main__':
    run_cli(main)
