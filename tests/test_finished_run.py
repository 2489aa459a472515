"""Finished runs stay finished (utils.run.finished_run): a resume of a complete run says so, exits 0 and touches
nothing; a resume with fewer epochs than trained is refused and changes nothing; args.yaml never names a recipe that the
checkpoints did not train with."""
import os
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from helpers import read_summary, refused, tiny_cifar_run, train_and_kill
from utils.errors import run_cli
from utils.run import run_folder
from utils.training.main import train_main


@pytest.fixture(scope='module')
def two_epochs(tmp_path_factory):
    return tiny_cifar_run(tmp_path_factory.mktemp('finished'), epochs=2)[1]


def copy_of(run_folder: Path, tmp_path: Path) -> Path:
    folder = tmp_path / 'run'
    subprocess.run(['cp', '-rp', str(run_folder), str(folder)], check=True)
    return folder


def state(folder: Path) -> dict:
    """Every entry of the folder with its bytes and modification time."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def test_a_resume_of_a_finished_run_says_so_and_touches_nothing(two_epochs, tmp_path, capsys, monkeypatch):
    folder = copy_of(two_epochs, tmp_path)
    before = state(folder)

    def read_only(*args, **kwargs):  # a finished run on a read-only disk is still just finished
        raise OSError(30, 'Read-only file system')
    monkeypatch.setattr(run_folder.tempfile, 'mkstemp', read_only)
    for extra in ([], ['--epochs', '2']):
        with pytest.raises(SystemExit) as e:
            run_cli(train_main, ['--resume', str(folder / 'last.pth.tar')] + extra)
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert f'run {folder} is finished: it has trained all 2 epochs' in out and '--epochs M' in out, out
        assert state(folder) == before


def test_a_resume_with_fewer_epochs_than_trained_is_refused(two_epochs, tmp_path, capsys):
    folder = copy_of(two_epochs, tmp_path)
    before = state(folder)
    refused(capsys, train_main, ['--resume', str(folder / 'last.pth.tar'), '--epochs', '1'],
            'already trained 2 epochs', '--epochs 1', 'Nothing was changed')
    assert state(folder) == before
    assert yaml.safe_load((folder / 'args.yaml').read_text())['epochs'] == 2


@pytest.mark.skipif(not hasattr(os, 'fork'), reason='needs fork (POSIX)')
def test_args_yaml_follows_the_checkpoints(two_epochs, tmp_path):
    folder = copy_of(two_epochs, tmp_path)
    resume = ['--resume', str(folder / 'last.pth.tar'), '--epochs', '3']
    # killed before the extended run saved an epoch: args.yaml still holds the recipe of the checkpoints
    train_and_kill(resume, 'torch.save', 'last.pth.tar', 1, 'before')
    recorded = torch.load(folder / 'last.pth.tar', weights_only=True)['args']
    assert yaml.safe_load((folder / 'args.yaml').read_text())['epochs'] == recorded['epochs'] == 2
    train_main(resume)
    assert yaml.safe_load((folder / 'args.yaml').read_text())['epochs'] == 3
    assert torch.load(folder / 'last.pth.tar', weights_only=True)['args']['epochs'] == 3
    assert [row['epoch'] for row in read_summary(folder)] == ['0', '1', '2']
