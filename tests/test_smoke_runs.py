"""One-line smoke tests (issue 24): every published config runs with --smoke (one epoch, two batches) on stand-in
data; an --epochs shorter than the warmup clips the warmup and cooldown with one line saying so."""
import os

import numpy as np
import pytest
import torch
import yaml

from helpers import CIFAR10_YML, IMAGENET_YML, REPO, TINY
from utils.data import loaders as data_module
from utils.data.loaders import DVS_DATASETS, ArrayImages
from utils.training.main import train_main

CONFIGS = sorted(str(p.relative_to(REPO)) for folder in ('imagenet', 'cifar10', 'cifar10-dvs', 'dvs128-gesture')
                 for p in (REPO / folder).glob('*.yml'))


class StandInEvents(torch.utils.data.Dataset):
    """Event frames of the config's shape (T frames of 2 x 32 x 32 counts), labels cycling over the classes."""

    def __init__(self, n: int, frames: int, classes: int):
        self.n, self.frames, self.classes = n, frames, classes

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.poisson(torch.full((self.frames, 2, 32, 32), 0.5)), i % self.classes


@pytest.fixture
def stand_in_data(monkeypatch):
    """``utils.data.loaders.build_datasets`` replaced by 32 training and 16 evaluation samples of the config's kind."""
    def build(cfg, train=True, evaluation=True):
        data_module.resolve_data_config(cfg)
        rng = np.random.default_rng(0)

        def make(n):
            if cfg.dataset in DVS_DATASETS:
                return StandInEvents(n, cfg.time_steps, cfg.num_classes)
            return ArrayImages(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), np.arange(n) % cfg.num_classes)
        return (make(32) if train else None), (make(16) if evaluation else None)
    monkeypatch.setattr(data_module, 'build_datasets', build)


def test_every_published_config_is_covered():
    assert len(CONFIGS) >= 15 and 'imagenet/imagenet.yml' in CONFIGS and 'cifar10/cifar10.yml' in CONFIGS


@pytest.mark.parametrize('config', CONFIGS)
def test_every_published_config_runs_as_a_smoke_test(config, stand_in_data, tmp_path, capsys):
    result = train_main(['--config', str(REPO / config), '--smoke', '--output', str(tmp_path / 'run')] + TINY)
    out = capsys.readouterr().out
    assert result['best_epoch'] == 0, out
    args = yaml.safe_load((tmp_path / 'run' / 'args.yaml').read_text())
    assert (args['epochs'], args['limit_train_batches'], args['limit_eval_batches']) == (1, 2, 2)
    assert args['warmup_epochs'] <= 1 and args['cooldown_epochs'] == 0
    assert out.count('short run (--smoke): clipped') == 1, out


def test_epochs_shorter_than_the_warmup_clips_it_with_one_line(stand_in_data, tmp_path, capsys):
    train_main(['--config', IMAGENET_YML, '--epochs', '2', '--limit-train-batches', '1', '--limit-eval-batches', '1',
                '--output', str(tmp_path / 'run')] + TINY)
    out = capsys.readouterr().out
    line = 'short run (epochs 2 is shorter than the warmup): clipped warmup_epochs 20 -> 2, cooldown_epochs 10 -> 0'
    assert out.count(line) == 1 and line in (tmp_path / 'run' / 'log.txt').read_text()
    assert len(open(tmp_path / 'run' / 'summary.csv').read().splitlines()) == 3  # header + the 2 epochs, no cooldown
    args = yaml.safe_load((tmp_path / 'run' / 'args.yaml').read_text())
    assert (args['warmup_epochs'], args['cooldown_epochs']) == (2, 0)


def test_a_run_that_fits_is_not_clipped(stand_in_data, tmp_path, capsys):
    """Without a cooldown a run may end inside its warmup, as before (nothing clipped); so may a run that fits."""
    for extra in (['--epochs', '1', '--warmup-epochs', '5', '--cooldown-epochs', '0'],
                  ['--epochs', '1', '--warmup-epochs', '1', '--cooldown-epochs', '0']):
        folder = tmp_path / str(len(os.listdir(tmp_path)))
        train_main(['--config', CIFAR10_YML, '--limit-train-batches', '1', '--limit-eval-batches', '1',
                    '--output', str(folder)] + TINY + extra)
        assert 'clipped' not in capsys.readouterr().out
        args = yaml.safe_load((folder / 'args.yaml').read_text())
        assert (args['warmup_epochs'], args['cooldown_epochs']) == (int(extra[3]), 0)
