"""Provenance wired into runs and evaluations: ``run.json`` in the run folder (one entry per start, a resume appends),
``checkpoint['provenance']``, and ``test.py``'s results file (the checkpoint's SHA-256 and its run's provenance); a
run started from a dirty tree and one started outside a git checkout (copies of the code in a temporary folder)."""
import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from helpers import REPO, refused
from utils.training.main import test_main as evaluate_main, train_main

QUICK = ['--config', str(REPO / 'cifar10' / 'quickstart.yml'), '--limit-train-batches', '2',
         '--limit-eval-batches', '1']
needs_git = pytest.mark.skipif(shutil.which('git') is None, reason='git is not installed')


def _starts(folder) -> list:
    return json.loads((folder / 'run.json').read_text())['starts']


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    """A 1-epoch run, then a resume to 2 epochs, in one folder."""
    folder = tmp_path_factory.mktemp('prov') / 'run'
    train_main(QUICK + ['--epochs', '1', '--output', str(folder)])
    first = _starts(folder)
    train_main(['--resume', str(folder / 'last.pth.tar'), '--epochs', '2'])
    return folder, first


@needs_git
def test_run_json_records_the_start(tiny_run):
    folder, first = tiny_run
    assert len(first) == 1
    record = first[0]
    assert record['command']['argv'][1:] == QUICK + ['--epochs', '1', '--output', str(folder)]
    head = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert record['git']['commit'] == head and isinstance(record['git']['dirty'], bool)
    assert record['versions']['torch'] and record['versions']['timm'] and record['versions']['spikingjelly']
    assert 'cupy' in record['versions'] and record['versions']['numpy']
    assert record['host']['hostname'] and record['host']['devices'] == ['cpu'] and record['host']['world_size'] == 1
    assert record['started'] and record['resumed_from'] is None


def test_resume_appends_and_keeps_the_first_start(tiny_run):
    folder, first = tiny_run
    starts = _starts(folder)
    assert len(starts) == 2 and starts[0] == first[0]
    assert starts[1]['resumed_from'] == str(folder / 'last.pth.tar')
    assert '--resume' in starts[1]['command']['argv']


def test_checkpoint_carries_the_provenance_of_its_start(tiny_run):
    folder, _ = tiny_run
    checkpoint = torch.load(folder / 'last.pth.tar', weights_only=True)
    assert checkpoint['epoch'] == 1 and checkpoint['provenance'] == _starts(folder)[1]


def test_results_record_checkpoint_hash_and_its_run(tiny_run, tmp_path):
    folder, _ = tiny_run
    path = folder / 'last.pth.tar'
    evaluate_main(['--checkpoint', str(path), '--output', str(tmp_path / 'eval'), '--limit-eval-batches', '1'])
    results = json.loads((tmp_path / 'eval' / 'results.json').read_text())
    assert results['checkpoint'] == str(path)
    assert results['checkpoint_sha256'] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert results['checkpoint_provenance'] == _starts(folder)[1]
    assert results['provenance']['command']['argv'][1:3] == ['--checkpoint', str(path)]


def test_foreign_run_json_is_kept_and_the_start_refused(tmp_path, capsys):
    folder = tmp_path / 'run'
    folder.mkdir()
    (folder / 'run.json').write_text('my notes, not JSON')
    # a new run refuses a non-empty folder before run.json matters; a resume reaches it
    train_main(QUICK + ['--epochs', '1', '--output', str(tmp_path / 'ok')])
    os.replace(tmp_path / 'ok' / 'last.pth.tar', folder / 'last.pth.tar')
    refused(capsys, train_main, ['--resume', str(folder / 'last.pth.tar'), '--epochs', '2'], 'run.json',
            'left as it is')
    assert (folder / 'run.json').read_text() == 'my notes, not JSON'


def _copy_code(destination) -> None:
    """The files a CIFAR-layout training needs, copied without any ``.git``."""
    for name in ('models', 'utils', 'cifar10'):
        shutil.copytree(REPO / name, destination / name, ignore=shutil.ignore_patterns('__pycache__'))


def _train_in(code, output) -> dict:
    subprocess.run([sys.executable, 'cifar10/train.py', *QUICK[:1], 'cifar10/quickstart.yml', *QUICK[2:],
                    '--epochs', '1', '--output', str(output)], cwd=code, check=True, capture_output=True, timeout=300)
    return _starts(output)[0]['git']


@needs_git
def test_outside_a_checkout_then_in_a_dirty_one(tmp_path):
    code = tmp_path / 'code'
    _copy_code(code)
    state = _train_in(code, tmp_path / 'no-git')
    assert state['commit'] is None and state['dirty'] is None and 'git' in state['reason']

    def git(*args):
        return subprocess.run(['git', '-c', 'user.name=t', '-c', 'user.email=t@t', *args], cwd=code, check=True,
                              capture_output=True, text=True).stdout.strip()
    git('init', '-q')
    git('add', '.')
    git('commit', '-q', '-m', 'copy')
    with open(code / 'models' / '__init__.py', 'a') as f:
        f.write('# an uncommitted change\n')
    state = _train_in(code, tmp_path / 'dirty')
    assert state == {'commit': git('rev-parse', 'HEAD'), 'dirty': True}
