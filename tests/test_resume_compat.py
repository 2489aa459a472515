"""Resuming runs recorded by earlier versions (keys added since), and under another number of processes (the global
batch is what must stay the same)."""
import shutil

import pytest
import torch

from helpers import CIFAR10_YML, TINY, run, write_cifar10
from utils.errors import EXIT_BAD_INPUT
from utils.training.main import train_main

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


def test_another_number_of_processes_must_keep_the_global_batch(one_epoch, tmp_path, capsys):
    assert torch.load(one_epoch['run'] / 'last.pth.tar', weights_only=True)['world_size'] == 1
    last = edited_copy(one_epoch, tmp_path, lambda c: c.update(world_size=2))  # as if trained on 2 processes
    code, err = run(train_main, ['--resume', str(last), '--epochs', '2'], capsys)
    assert code == EXIT_BAD_INPUT, err
    assert 'global batch (batch_size x processes x grad_accum_steps): run 16 x 2 x 1 = 32, now 16 x 1 x 1 = 16' in err
    assert '--grad-accum-steps 2 keeps' in err and 'grad_accum_steps: run' not in err
    code, err = run(train_main, ['--resume', str(last), '--epochs', '2', '--batch-size', '32'], capsys)
    assert code == EXIT_BAD_INPUT and 'batch_size: run 16, now 32' in err  # the per-process batch stays protected
    assert 'global batch (' not in err  # 32 x 1 x 1 is the run's global batch: only batch_size is listed

    train_main(['--resume', str(last), '--epochs', '2', '--grad-accum-steps', '2'])
    log = (last.parent / 'log.txt').read_text()
    assert "global batch as the run's: 16 x 1 x 2 = 32 (batch_size x processes x grad_accum_steps; the run had " \
           "16 x 2 x 1 = 32)" in log
    assert torch.load(last, weights_only=True)['world_size'] == 1


def test_a_global_batch_no_accumulation_keeps_is_explained(one_epoch):
    from utils.config import load_config
    from utils.errors import UserError
    from utils.run.run_folder import check_same_recipe
    recorded = torch.load(one_epoch['run'] / 'last.pth.tar', weights_only=True)['args']
    cfg = load_config(['--resume', 'last.pth.tar'], base=recorded)
    with pytest.raises(UserError, match=r'No --grad-accum-steps keeps the run\'s global batch with batch_size 16 on '
                                        r'2 process\(es\): resume on a number of processes that divides 3'):
        check_same_recipe(recorded, cfg, world=2, recorded_world=3)
    assert check_same_recipe(recorded, cfg, world=3, recorded_world=3) is None


def test_a_checkpoint_without_its_number_of_processes_compares_grad_accum_steps(one_epoch, tmp_path, capsys):
    last = edited_copy(one_epoch, tmp_path, lambda c: c.pop('world_size'))
    code, err = run(train_main, ['--resume', str(last), '--epochs', '2', '--grad-accum-steps', '2'], capsys)
    assert code == EXIT_BAD_INPUT and 'grad_accum_steps: run 1, now 2' in err and 'global batch' not in err, err


def test_the_autocast_dtype_is_recorded_as_it_ran_and_kept_on_resume(one_epoch, tmp_path, capsys):
    """``amp_dtype: auto`` is recorded resolved (bfloat16 on CPU, float16 on CUDA), so that a run resumed on another
    device continues in its own dtype instead of switching silently; a run of an earlier version recorded ``auto``,
    and its checkpoint tells which it was (only float16 saves the gradient scaler's state)."""
    amp = one_epoch['base'] + ['--amp', 'true', '--epochs', '1', '--output']
    train_main(amp + [str(tmp_path / 'bf16')])
    train_main(amp + [str(tmp_path / 'fp16'), '--amp-dtype', 'float16'])  # what auto gives on CUDA
    bf16 = tmp_path / 'bf16' / 'last.pth.tar'
    assert torch.load(bf16, weights_only=True)['args']['amp_dtype'] == 'bfloat16'
    assert 'amp_dtype: bfloat16' in (tmp_path / 'bf16' / 'args.yaml').read_text()

    code, err = run(train_main, ['--resume', str(bf16), '--epochs', '2', '--amp-dtype', 'float16'], capsys)
    assert code == EXIT_BAD_INPUT and "amp_dtype: run 'bfloat16', now 'float16'" in err, err
    for name, dtype in (('bf16', 'bfloat16'), ('fp16', 'float16')):
        earlier = tmp_path / 'earlier'
        shutil.rmtree(earlier, ignore_errors=True)
        shutil.copytree(tmp_path / name, earlier)
        checkpoint = torch.load(earlier / 'last.pth.tar', weights_only=True)
        checkpoint['args']['amp_dtype'] = 'auto'
        torch.save(checkpoint, earlier / 'last.pth.tar')
        train_main(['--resume', str(earlier / 'last.pth.tar'), '--epochs', '2'])
        assert f'amp {dtype}, evaluation in {dtype}' in (earlier / 'log.txt').read_text().split('resum')[-1], name
        resumed = torch.load(earlier / 'last.pth.tar', weights_only=True)
        assert resumed['epoch'] == 1 and resumed['args']['amp_dtype'] == dtype
        assert ('amp_scaler' in resumed) == (dtype == 'float16')
