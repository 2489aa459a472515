"""utils.run.provenance: the git state (clean, dirty, no checkout), the versions and the file hash."""
import hashlib
import os
import shutil
import subprocess

import pytest

from utils.run import provenance
pytestmark = pytest.mark.skipif(shutil.which('git') is None, reason='git is not installed')


def _git(folder, *args):
    subprocess.run(['git', '-c', 'user.name=t', '-c', 'user.email=t@t', *args], cwd=folder, check=True,
                   capture_output=True)


@pytest.fixture
def checkout(tmp_path):
    folder = tmp_path / 'repo'
    folder.mkdir()
    (folder / 'code.py').write_text('x = 1\n')
    _git(folder, 'init', '-q')
    _git(folder, 'add', 'code.py')
    _git(folder, 'commit', '-q', '-m', 'one')
    return folder


def test_clean_checkout_records_its_commit(checkout):
    head = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=checkout, capture_output=True, text=True).stdout.strip()
    assert provenance.git_state(str(checkout)) == {'commit': head, 'dirty': False}


def test_changed_tracked_file_is_dirty_and_untracked_output_is_not(checkout):
    (checkout / 'output').mkdir()
    (checkout / 'output' / 'log.txt').write_text('a run\n')
    assert provenance.git_state(str(checkout))['dirty'] is False
    (checkout / 'code.py').write_text('x = 2\n')
    assert provenance.git_state(str(checkout))['dirty'] is True


def test_outside_a_checkout_gives_a_reason_not_an_error(tmp_path):
    copy = tmp_path / 'copied'
    copy.mkdir()
    state = provenance.git_state(str(copy))
    assert state['commit'] is None and state['dirty'] is None and state['reason']


def test_subfolder_of_another_checkout_is_not_taken_for_this_code(checkout):
    inner = checkout / 'vendored'
    inner.mkdir()
    state = provenance.git_state(str(inner))
    assert state['commit'] is None and 'not the top' in state['reason']


def test_record_fields(monkeypatch):
    record = provenance.run_provenance(['cifar10/train.py', '--lr', '1e-3', '--output', 'a b'], world_size=2)
    assert record['command']['line'] == "cifar10/train.py --lr 1e-3 --output 'a b'"
    assert record['host']['world_size'] == 2 and record['host']['devices']
    import torch
    import numpy
    assert record['versions']['torch'] == torch.__version__.split('+')[0] or \
        torch.__version__.startswith(record['versions']['torch'])
    assert record['versions']['numpy'] == numpy.__version__
    assert set(record['versions']) == {'python', *provenance.PACKAGES}
    assert record['started'].endswith('+00:00')


def test_file_sha256_matches_hashlib_across_chunks(tmp_path):
    path = tmp_path / 'w.bin'
    data = os.urandom(3000)
    path.write_bytes(data)
    assert provenance.file_sha256(str(path), chunk=1000) == hashlib.sha256(data).hexdigest()
