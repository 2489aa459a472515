"""Paths the user gets wrong get messages that say what is wrong and what works: a folder given as a checkpoint, a
dangling symlink as --output, `~` in any path key, and --resume in a read-only folder."""
import os
import shutil

import pytest
import yaml

from helpers import CIFAR10_YML, TINY, load_script, read_summary, refused, tiny_cifar_run
from utils.config import PATH_KEYS, load_config
from utils.run import run_folder
from utils.training.main import test_main as evaluate_main  # not named test_* (pytest would collect it)
from utils.training.main import train_main


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp('paths')
    data, run = tiny_cifar_run(root, epochs=1)
    return dict(root=root, data=data, run=run)


def test_a_folder_given_as_a_checkpoint(runs, capsys):
    err = refused(capsys, evaluate_main, ['--checkpoint', str(runs['run'])], 'is a folder, not a checkpoint file',
                  str(runs['run'] / 'model_best.pth.tar'))
    assert 'not found' not in err
    refused(capsys, train_main, ['--resume', str(runs['run'])], 'is a folder',
            f'--resume {runs["run"] / "last.pth.tar"}')


def test_a_dangling_symlink_as_output(runs, tmp_path, capsys):
    link = tmp_path / 'run'
    link.symlink_to(tmp_path / 'scratch' / 'run')
    err = refused(capsys, train_main, ['--config', CIFAR10_YML, '--data-dir', str(runs['data']), '--output',
                                       str(link)] + TINY, 'symbolic link', 'does not exist', 'create that folder')
    assert 'File exists' not in err and not (tmp_path / 'scratch').exists() and link.is_symlink()


def test_a_tilde_is_expanded_in_every_path_key(monkeypatch, tmp_path):
    monkeypatch.setenv('HOME', str(tmp_path))
    argv = [a for key in PATH_KEYS for a in (f'--{key.replace("_", "-")}', f'~/{key}')]
    cfg = load_config(argv)
    assert {key: getattr(cfg, key) for key in PATH_KEYS} == {key: str(tmp_path / key) for key in PATH_KEYS}
    (tmp_path / 'c.yml').write_text(yaml.safe_dump({'data_dir': '~/data', 'epochs': 3}))
    cfg = load_config(['--config=~/c.yml'])
    assert cfg.data_dir == str(tmp_path / 'data') and cfg.epochs == 3
    prepare_dvs = load_script('prepare_dvs')
    assert prepare_dvs.main(['dvs128-gesture', '--synthetic', '--raw=~/raw', '--per-class', '2', '--no-progress']) == 0
    assert (tmp_path / 'raw').is_dir() and not os.path.exists('~')


def test_resume_in_a_read_only_folder_gives_advice_that_works(runs, tmp_path, capsys, monkeypatch):
    folder = tmp_path / 'run'
    shutil.copytree(runs['run'], folder)
    real_mkstemp = run_folder.tempfile.mkstemp

    def read_only(*args, dir=None, **kwargs):
        if os.path.abspath(dir) == str(folder):
            raise OSError(30, 'Read-only file system')
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(run_folder.tempfile, 'mkstemp', read_only)
    err = refused(capsys, train_main, ['--resume', str(folder / 'last.pth.tar'), '--epochs', '2'],
                  'Read-only', f'cp -r {folder} NEW_FOLDER', '--resume NEW_FOLDER/last.pth.tar')
    assert 'with --output' not in err  # --output with --resume is refused: that advice would not work
    copy = tmp_path / 'copy'  # the advice, followed
    shutil.copytree(folder, copy)
    train_main(['--resume', str(copy / 'last.pth.tar'), '--epochs', '2'])
    assert [row['epoch'] for row in read_summary(copy)] == ['0', '1']
