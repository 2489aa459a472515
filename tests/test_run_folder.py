"""A run folder belongs to one run: overwrite protection, resume in place and under the run's recipe only, a
consistent folder after kill -9 at chosen instants of the checkpoint writes, output checks and full disks.

Runs of a tiny model on synthetic CIFAR pickles (as tests/test_engine.py); the kill tests fork the test process
(no interpreter start-up) and SIGKILL the child at one step of the save sequence, then resume in the parent and
compare with an uninterrupted run.
"""
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from helpers import (CIFAR10_YML, SCHEDULE, TINY, assert_same_run, load_script, refused, run, train_and_kill,
                     write_cifar10)
from utils.config import SCHEMA, Key, load_config
from utils.errors import EXIT_BAD_INPUT
from utils.run import run_folder
from utils.training.main import test_main as evaluate_main  # not named test_* (pytest would collect it)
from utils.training.main import train_main

@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp('run_folder')
    data = write_cifar10(root / 'cifar')
    base = ['--config', CIFAR10_YML, '--data-dir', str(data)] + TINY + SCHEDULE
    straight, two = root / 'straight', root / 'two'
    train_main(base + ['--epochs', '3', '--output', str(straight)])
    train_main(base + ['--epochs', '2', '--output', str(two)])
    return dict(root=root, data=data, base=base, straight=straight, two=two)


def snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# ---- overwrite protection ----------------------------------------------------------------------------------------

def test_a_fresh_run_refuses_a_non_empty_output(runs, tmp_path, capsys):
    folder = tmp_path / 'run'
    shutil.copytree(runs['two'], folder)
    before = snapshot(folder)
    refused(capsys, train_main, runs['base'] + ['--epochs', '3', '--output', str(folder)],
            'not empty', f'--resume {folder / "last.pth.tar"}', 'another --output')
    assert snapshot(folder) == before
    stray = tmp_path / 'stray'
    stray.mkdir()
    (stray / 'notes.txt').write_text('mine')
    refused(capsys, train_main, runs['base'] + ['--output', str(stray)], 'notes.txt', 'no checkpoint')
    assert os.listdir(stray) == ['notes.txt']


def test_resume_of_a_copied_or_renamed_folder_writes_into_it(runs, tmp_path):
    original = snapshot(runs['two'])
    copy = tmp_path / 'copy'
    shutil.copytree(runs['two'], copy)
    # the README's form: the copy's args.yaml names the original folder as output; the checkpoint's folder wins
    assert yaml.safe_load((copy / 'args.yaml').read_text())['output'] == str(runs['two'])
    train_main(['--config', str(copy / 'args.yaml'), '--epochs', '3', '--resume', str(copy / 'last.pth.tar')])
    assert snapshot(runs['two']) == original
    assert_same_run(copy, runs['straight'])
    saved = yaml.safe_load((copy / 'args.yaml').read_text())
    assert saved['output'] == str(copy) and saved['resume'] is None and saved['epochs'] == 3
    # --resume alone: the run's config comes from the checkpoint
    renamed = tmp_path / 'renamed'
    shutil.copytree(runs['two'], tmp_path / 'tmp_copy')
    os.rename(tmp_path / 'tmp_copy', renamed)
    train_main(['--resume', str(renamed / 'last.pth.tar'), '--epochs', '3'])
    assert snapshot(runs['two']) == original
    assert_same_run(renamed, runs['straight'])
    assert f'resumed from {renamed / "last.pth.tar"} at epoch 2' in (renamed / 'log.txt').read_text()


def test_resume_stays_in_its_folder(runs, tmp_path, capsys):
    folder = tmp_path / 'run'
    shutil.copytree(runs['two'], folder)
    before = snapshot(folder)
    refused(capsys, train_main, ['--resume', str(folder / 'last.pth.tar'), '--output', str(tmp_path / 'other')],
            'different folders', str(folder))
    assert not (tmp_path / 'other').exists()
    # another checkpoint file of the folder: continuing from it would overwrite the later last.pth.tar
    shutil.copyfile(folder / 'last.pth.tar', folder / 'epoch1.pth.tar')
    refused(capsys, train_main, ['--resume', str(folder / 'epoch1.pth.tar')], 'would overwrite', 'last.pth.tar')
    (folder / 'epoch1.pth.tar').unlink()
    assert snapshot(folder) == before


@pytest.mark.parametrize('change,words', [
    (['--opt', 'sgd'], ["opt: run 'adamw', now 'sgd'"]),
    (['-T', '2'], ['time_steps: run 1, now 2']),
    (['--embed-dims', '64', '--lr', '0.1'], ['embed_dims: run 32, now 64', 'lr: run 0.0005, now 0.1']),
])
def test_resume_refuses_another_recipe(runs, tmp_path, capsys, change, words):
    folder = tmp_path / 'run'
    shutil.copytree(runs['two'], folder)
    before = snapshot(folder)
    err = refused(capsys, train_main, ['--resume', str(folder / 'last.pth.tar'), '--epochs', '3'] + change,
                  'another recipe', *words)
    assert 'epochs' in err.splitlines()[-1] and 'workers' in err  # what may change is said
    assert snapshot(folder) == before  # args.yaml included


def test_a_failing_start_leaves_the_folder_alone(runs, tmp_path, capsys):
    folder = tmp_path / 'run'
    shutil.copytree(runs['two'], folder)
    before = snapshot(folder)
    refused(capsys, train_main, ['--resume', str(folder / 'last.pth.tar'), '--epochs', '3',
                                 '--data-dir', str(tmp_path / 'moved')], 'moved')
    assert snapshot(folder) == before


def test_only_declared_keys_may_change_on_resume():
    assert not Key(1, int).may_change_on_resume  # a key added later is protected by default
    assert SCHEMA['workers'].may_change_on_resume and SCHEMA['epochs'].may_change_on_resume
    assert not any(SCHEMA[k].may_change_on_resume for k in ('model', 'time_steps', 'num_classes', 'opt', 'lr',
                                                            'batch_size', 'seed', 'amp', 'mixup'))
    cfg = load_config(['--workers', '0', '--epochs', '9'])
    recorded = {**cfg.to_dict(), 'workers': 3, 'epochs': 1}
    assert run_folder.recipe_differences(recorded, cfg) == []
    schema = {**SCHEMA, 'new_key': Key(5, int)}
    assert run_folder.recipe_differences(recorded, cfg, schema) == []  # not in cfg
    cfg = load_config(['--new-key', '6'], extra_keys={'new_key': Key(5, int)})
    assert run_folder.recipe_differences(cfg.to_dict() | {'new_key': 5}, cfg, schema) == [('new_key', 5, 6)]
    del recorded['mean']  # recorded before the key existed: its default, resolved for the run's data set, counts
    assert run_folder.recipe_differences(recorded, load_config(['--mean', '0.5', '0.5', '0.5'])) == \
        [('mean', (0.4914, 0.4822, 0.4465), (0.5, 0.5, 0.5))]


# ---- kill -9 at chosen instants of the checkpoint writes ------------------------------------------------------------

# (function, file the call writes, n-th such call, kill before or after it, what the folder then holds)
KILLS = {
    'last written, not yet renamed': ('torch.save', 'last.pth.tar', 2, 'after'),
    'last renamed, best not linked': ('os.link', 'model_best.pth.tar', 1, 'before'),
    'best linked, not yet renamed': ('os.link', 'model_best.pth.tar', 1, 'after'),
    'summary written, checkpoint not': ('os.replace', 'summary.csv', 2, 'after'),
    'final last renamed': ('os.replace', 'last.pth.tar', 3, 'after'),
}


@pytest.mark.skipif(not hasattr(os, 'fork'), reason='needs fork (POSIX)')
@pytest.mark.parametrize('kill', list(KILLS))
def test_kill_at_any_step_then_resume_equals_the_uninterrupted_run(runs, tmp_path, kill):
    folder = tmp_path / 'run'
    train_and_kill(runs['base'] + ['--epochs', '3', '--output', str(folder)], *KILLS[kill])
    left = os.listdir(folder)
    last = torch.load(folder / 'last.pth.tar', weights_only=True)  # always a whole checkpoint
    if kill in ('last written, not yet renamed', 'best linked, not yet renamed'):
        assert [p for p in left if '.tmp' in p]
    if kill == 'last renamed, best not linked':
        assert 'model_best.pth.tar' not in left and last['best_epoch'] == last['epoch'] == 0

    result = train_main(runs['base'] + ['--epochs', '3', '--resume', str(folder / 'last.pth.tar')])
    assert_same_run(folder, runs['straight'])
    assert result['best_epoch'] == torch.load(folder / 'model_best.pth.tar', weights_only=True)['epoch']
    log = (folder / 'log.txt').read_text()
    if kill in ('last renamed, best not linked', 'best linked, not yet renamed'):
        assert 'model_best.pth.tar repaired' in log
    if kill in ('last written, not yet renamed', 'best linked, not yet renamed'):
        assert 'removed temporary files' in log
    if kill == 'final last renamed':  # the run was complete: the resume says so and touches nothing (test_finished_run)
        assert 'done:' not in log
    else:
        assert log.rstrip().splitlines()[-1].endswith('(summary.csv, model_best.pth.tar, last.pth.tar)')


def test_a_stale_best_is_repaired_or_reported(runs, tmp_path):
    folder = tmp_path / 'run'
    shutil.copytree(runs['straight'], folder)
    last = torch.load(folder / 'last.pth.tar', weights_only=True)
    (folder / 'model_best.pth.tar').unlink()
    note = run_folder.repair_best(str(folder), {'epoch': 5, 'best_epoch': 5, 'best_metric': 1.0})
    assert 'repaired' in note and os.path.samefile(folder / 'model_best.pth.tar', folder / 'last.pth.tar')
    assert run_folder.repair_best(str(folder), {'epoch': 5, 'best_epoch': last['epoch']}) is None
    note = run_folder.repair_best(str(folder), {'epoch': 5, 'best_epoch': 1, 'best_metric': 60.0})
    assert note.startswith('warning') and 'epoch 1' in note


# ---- output checks and full disks ------------------------------------------------------------------------------------

def test_an_output_that_is_a_file_or_not_writable(runs, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / 'file'
    blocker.write_text('keep me')
    refused(capsys, train_main, runs['base'] + ['--output', str(blocker)], 'is a file')
    refused(capsys, train_main, runs['base'] + ['--output', str(blocker / 'run')], 'is a file')
    refused(capsys, evaluate_main, ['--checkpoint', str(runs['two'] / 'last.pth.tar'), '--output', str(blocker)],
            'is a file')
    assert blocker.read_text() == 'keep me'

    def read_only(*args, **kwargs):
        raise OSError(30, 'Read-only file system')

    monkeypatch.setattr(run_folder.tempfile, 'mkstemp', read_only)
    refused(capsys, train_main, runs['base'] + ['--output', str(tmp_path / 'ro')], 'Read-only', 'cannot be written')
    assert not (tmp_path / 'ro').exists()


def test_a_full_disk_is_found_before_training(runs, tmp_path, capsys, monkeypatch):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(run_folder.shutil, 'disk_usage', lambda path: usage._replace(free=10_000))
    refused(capsys, train_main, runs['base'] + ['--output', str(tmp_path / 'run')], 'not enough free space',
            '9.8 KiB free')
    assert not (tmp_path / 'run').exists()
    size = run_folder.checkpoint_size_estimate(*_model_and_optimizer())
    actual = (runs['two'] / 'last.pth.tar').stat().st_size
    assert actual <= size <= actual + 2 ** 20 + 64 * 1024


def _model_and_optimizer():
    from timm.optim import create_optimizer_v2

    from utils.training.factory import build_model
    cfg = load_config(['--config', CIFAR10_YML] + TINY)
    model = build_model(cfg)
    return model, create_optimizer_v2(model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay)


def test_disk_full_during_a_save(runs, tmp_path, capsys, monkeypatch):
    folder = tmp_path / 'run'
    save, calls = torch.save, []

    def save_until_full(obj, path):
        calls.append(path)
        if len(calls) < 2:
            return save(obj, path)
        with open(path, 'wb') as f:
            f.write(b'half a checkpoint')
        raise RuntimeError('[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0\n' + 'frame\n' * 35)

    monkeypatch.setattr(torch, 'save', save_until_full)
    err = refused(capsys, train_main, runs['base'] + ['--epochs', '3', '--output', str(folder)],
                  'cannot write', 'epoch 1 was not saved', 'left as it was', f'--resume {folder / "last.pth.tar"}')
    assert 'frame' not in err
    monkeypatch.undo()
    assert torch.load(folder / 'last.pth.tar', weights_only=True)['epoch'] == 0
    assert not [p for p in os.listdir(folder) if '.tmp' in p]
    train_main(runs['base'] + ['--epochs', '3', '--resume', str(folder / 'last.pth.tar')])
    assert_same_run(folder, runs['straight'])


def test_evaluations_print_before_they_write(runs, tmp_path, capsys):
    out = tmp_path / 'out'
    (out / 'results.json').mkdir(parents=True)  # results.json cannot be written
    (out / 'energy.json').mkdir()
    best = str(runs['straight'] / 'model_best.pth.tar')
    code, err = run(evaluate_main, ['--checkpoint', best, '--output', str(out)])
    captured = capsys.readouterr()
    assert code == EXIT_BAD_INPUT and 'top-1' in captured.out, captured
    assert 'results.json' in captured.err and 'not saved' in captured.err and 'Traceback' not in captured.err
    code, _ = run(load_script('energy_report').main,
                  ['--checkpoint', best, '--limit-batches', '1', '--output', str(out)])
    captured = capsys.readouterr()
    assert code == EXIT_BAD_INPUT and ' AC, ' in captured.out and 'per sample' in captured.out, captured
    assert 'energy.json' in captured.err and 'not saved' in captured.err and 'Traceback' not in captured.err
    assert sorted(os.listdir(out)) == ['energy.json', 'results.json']  # no temporary files left
