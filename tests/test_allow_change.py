"""Deliberate changes on resume (issue 24): --allow-change lr continues the run exactly as a run that had the new lr
from that epoch on, records the change, and refuses the keys that cannot change mid-run with the reason."""
import pytest
import torch

from helpers import CIFAR10_YML, SCHEDULE, TINY, assert_same_run, read_summary, refused, write_cifar10
from utils.training import main as main_module
from utils.training.main import train_main

NEW_LR = 2e-3
RUN = TINY + SCHEDULE + ['--limit-train-batches', '2', '--limit-eval-batches', '1']


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return str(write_cifar10(tmp_path_factory.mktemp('allow_change') / 'cifar'))


class SwitchAt:
    """Two timm schedules on one optimizer: the first before epoch ``at``, the second from it on."""

    def __init__(self, before, after, at: int):
        self.before, self.after, self.at = before, after, at

    def step(self, epoch, metric=None):
        (self.after if epoch >= self.at else self.before).step(epoch)


def test_resume_with_a_changed_lr_equals_a_run_that_changed_it_then(data, tmp_path, monkeypatch, capsys):
    base = ['--config', CIFAR10_YML, '--data-dir', data] + RUN
    run = tmp_path / 'run'
    train_main(base + ['--epochs', '2', '--output', str(run)])
    train_main(['--resume', str(run / 'last.pth.tar'), '--epochs', '3', '--lr', str(NEW_LR), '--allow-change', 'lr'])
    assert 'deliberate changes (--allow-change): epoch 2: lr 0.0005 -> 0.002' in capsys.readouterr().out

    # the reference: one uninterrupted 3-epoch run whose schedule switches to the new peak lr at epoch 2
    build_schedule = main_module.build_schedule

    def switching(optimizer, cfg):
        before, epochs = build_schedule(optimizer, cfg)
        old = [group['initial_lr'] for group in optimizer.param_groups]
        for group in optimizer.param_groups:
            group['initial_lr'] = NEW_LR
        after, _ = build_schedule(optimizer, cfg)
        for group, lr in zip(optimizer.param_groups, old):
            group['initial_lr'] = lr
        return SwitchAt(before, after, 2), epochs
    monkeypatch.setattr(main_module, 'build_schedule', switching)
    reference = tmp_path / 'reference'
    train_main(base + ['--epochs', '3', '--output', str(reference)])
    monkeypatch.undo()
    assert float(read_summary(run)[2]['lr']) > float(read_summary(run)[1]['lr']) * 3  # the change took effect
    assert_same_run(run, reference)

    # recorded: in the checkpoint, in log.txt, and in the start line of every later resume
    last = torch.load(run / 'last.pth.tar', weights_only=True)
    assert last['changes'] == [dict(epoch=2, key='lr', old=5e-4, new=NEW_LR)] and last['args']['lr'] == NEW_LR
    assert 'lr 0.0005 -> 0.002' in (run / 'log.txt').read_text()
    train_main(['--resume', str(run / 'last.pth.tar'), '--epochs', '4'])
    assert 'deliberate changes (--allow-change): epoch 2: lr 0.0005 -> 0.002' in capsys.readouterr().out
    assert torch.load(run / 'last.pth.tar', weights_only=True)['changes'] == last['changes']


@pytest.fixture(scope='module')
def one_epoch_run(data, tmp_path_factory):
    run = tmp_path_factory.mktemp('refusals') / 'run'
    train_main(['--config', CIFAR10_YML, '--data-dir', data, '--epochs', '1', '--output', str(run)] + RUN)
    return run / 'last.pth.tar'


@pytest.mark.parametrize('argv, words', [
    (['--lr', '1e-4'], ['lr: run 0.0005, now 0.0001', '--allow-change']),  # not named: refused as before
    (['--embed-dims', '64', '--allow-change', 'embed_dims'], ['embed_dims cannot change', 'architecture']),
    (['--img-size', '32', '--allow-change', 'img-size'], ['img_size cannot change', 'data']),
    (['--batch-size', '8', '--allow-change', 'batch_size'], ['batch_size cannot change', 'global batch']),
    (['--allow-change', 'lr,lrr'], ["no such key (did you mean 'lr'?)"]),
    (['--lr', '1e-4', '--weight-decay', '0.1', '--allow-change', 'lr'], ['weight_decay: run 0.06, now 0.1']),
])
def test_keys_that_cannot_change_are_refused_with_the_reason(one_epoch_run, capsys, argv, words):
    refused(capsys, train_main, ['--resume', str(one_epoch_run), '--epochs', '2'] + argv, *words)


def test_allow_change_without_resume_is_refused(data, capsys, tmp_path):
    refused(capsys, train_main, ['--config', CIFAR10_YML, '--data-dir', data, '--allow-change', 'lr', '--epochs', '1',
                                 '--output', str(tmp_path / 'new')] + RUN, 'applies to --resume')
    assert not (tmp_path / 'new').exists()
