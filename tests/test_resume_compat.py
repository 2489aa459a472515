"""Resuming runs recorded by earlier versions (keys added since), and under another number of processes (the global
batch is what must stay the same)."""
import shutil

import pytest
import torch

from test_engine import CIFAR10_YML, TINY, run, write_cifar10
from utils.errors import EXIT_BAD_INPUT
from utils.main import train_main

# keys added after the first release: a checkpoint of that release records none of them
NEWER_KEYS = ('eval_amp', 'dist_bn', 'grad_accum_steps', 'initial_checkpoint', 'trust_checkpoint')


@pytest.fixture(scope='module')
def one_epoch(tmp_path_factory):
    """A finished 1-epoch run of a tiny model; tests resume copies of it."""
    root = tmp_path_factory.mktemp('resume_compat')
    data = write_cifar10(root / 'cifar')
    base = ['--config', CIFAR10_YML, '--data-dir', str(data)] + TINY + \
        ['--warmup-epochs', '1', '--cooldown-epochs', '0', '--limit-train-batches', '2']
    train_main(base + ['--epochs', '1', '--output', str(root / 'run')])
    return dict(base=base, run=root / 'run')


def edited_copy(one_epoch, tmp_path, edit):
    """A copy of the run whose last.pth.tar went through ``edit(checkpoint)``; returns its path."""
    folder = tmp_path / 'run'
    shutil.copytree(one_epoch['run'], folder)
    last = folder / 'last.pth.tar'
    checkpoint = torch.load(last, weights_only=True)
    edit(checkpoint)
    torch.save(checkpoint, last)
    return last


def drop_newer_keys(checkpoint):
    for name in NEWER_KEYS:
        del checkpoint['args'][name]


def test_a_run_recorded_before_newer_keys_resumes(one_epoch, tmp_path, capsys):
    last = edited_copy(one_epoch, tmp_path, drop_newer_keys)
    result = train_main(['--resume', str(last), '--epochs', '2'])
    assert result['output'] == str(last.parent)
    assert torch.load(last, weights_only=True)['epoch'] == 1


def test_a_newer_key_set_against_the_old_behaviour_is_refused(one_epoch, tmp_path, capsys):
    """The missing key counts as what that run did (its default, resolved: images were evaluated under autocast)."""
    last = edited_copy(one_epoch, tmp_path, drop_newer_keys)
    code, err = run(train_main, ['--resume', str(last), '--epochs', '2', '--eval-amp', 'false'], capsys)
    assert code == EXIT_BAD_INPUT and 'eval_amp: run True, now False' in err, err
