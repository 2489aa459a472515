"""Ctrl-C prints one line and exits 130, whatever the entry point is doing: importing, starting DataLoader workers,
training with them, building the frame cache, converting raw event data.

Each case starts the script in its own process group and sends SIGINT to the whole group, as a terminal's Ctrl-C
does (DataLoader workers and SpikingJelly's threads see it too), at an instant found by waiting for an observable
event (a line of the script's output, the end of an import, a folder it creates), never after a fixed delay. A
process killed by the default SIGINT action after its line was printed (a second Ctrl-C in the last moments of
Python's shutdown, when no handler is left) counts as 130, as a shell reports it.
"""
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from helpers import REPO, TINY_MODEL, write_cifar10

TINY = TINY_MODEL + ['--no-amp', '--threads', '1', '--workers', '2', '--cooldown-epochs', '0', '--warmup-epochs', '0',
                     '--epochs', '50', '--log-interval', '1']
IMPORT_TIME = re.compile(r'^import time:')  # python -X importtime's lines on stderr
IMPORTED_TORCH = re.compile(r'^import time:.*\|\s*torch(\.\S+)?\s*$')  # a first module of torch has been imported


def interrupt(argv, after=None, delay=0.0, again=None, importtime=False):
    """Run ``python -u argv...`` and SIGINT its process group ``delay`` s after an observable event, or right after
    the start; a second SIGINT ``again`` s later. Returns (exit code, stderr without import-time lines).

    ``after``: a string that a line of stdout contains, a regular expression that a line matches (of stderr with
    ``importtime``: ``python -X importtime`` prints a line as each import ends), or a function polled until it
    returns true (e.g. a file exists)."""
    flags = ['-u'] + (['-X', 'importtime'] if importtime else [])
    proc = subprocess.Popen([sys.executable] + flags + [str(a) for a in argv], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        if callable(after):
            while not after():
                if proc.poll() is not None:
                    pytest.fail(f'{argv[0]} ended before {after!r}: {proc.stderr.read()[-2000:]}')
                time.sleep(0.005)
        elif after is not None:
            for line in proc.stderr if importtime else proc.stdout:
                if after.search(line) if isinstance(after, re.Pattern) else after in line:
                    break
            else:
                pytest.fail(f'{argv[0]} ended before printing {after!r}: {proc.stderr.read()[-2000:]}')
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGINT)
        if again is not None:
            time.sleep(again)
            os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, ''.join(line for line in err.splitlines(True) if not IMPORT_TIME.match(line))


def assert_one_line(code, err):
    assert code in (130, -signal.SIGINT), (code, err)
    assert len(err.splitlines()) == 1 and err.startswith('error: interrupted') and 'Traceback' not in err, err


@pytest.fixture(scope='module')
def cifar(tmp_path_factory):
    """CIFAR-10 pickles with enough samples for an epoch that outlasts the signal."""
    return write_cifar10(tmp_path_factory.mktemp('cifar'), 200, test=100)


@pytest.mark.parametrize('after, delay, again', [
    (IMPORTED_TORCH, 0.0, None),  # importing torch (then timm, SpikingJelly)
    ('parameters', 0.0, None),    # the run is set up: the DataLoader is forking its workers
    ('epoch 0 [', 0.0, 0.05),     # training with workers; a second Ctrl-C while it winds down
], ids=['imports', 'workers-starting', 'training-twice'])
def test_train_py(cifar, tmp_path, after, delay, again):
    argv = ['cifar10/train.py', '--data-dir', cifar, '--img-size', '16', '-T', '1', '--batch-size', '16',
            '--output', tmp_path / 'run'] + TINY
    assert_one_line(*interrupt(argv, after, delay, again, importtime=after is IMPORTED_TORCH))


def test_frame_cache_building_and_prepare_dvs(tmp_path):
    from utils.data.dvs_data import build_dvs_datasets
    raw, root = tmp_path / 'raw', tmp_path / 'root'
    # as prepare_dvs.py starts to write synthetic raw data (it makes the raw folder first; about 2 s of work remain)
    assert_one_line(*interrupt(['scripts/prepare_dvs.py', 'cifar10-dvs', '--synthetic', '--raw', raw, '--root', root,
                                '--per-class', '60', '--no-progress'], raw.exists))
    assert not (root / 'events_np').exists()
    done = subprocess.run([sys.executable, 'scripts/prepare_dvs.py', 'cifar10-dvs', '--synthetic', '--raw',
                           tmp_path / 'raw10', '--root', root, '--per-class', '10', '--no-progress'], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # while SpikingJelly's threads integrate the frames: the samples not started are cancelled
    argv = ['cifar10-dvs/train.py', '--data-dir', root, '--batch-size', '4', '--output', tmp_path / 'run'] + TINY
    assert_one_line(*interrupt(argv, 'integrating', 0.05))
    cache = root / 'frames_number_16_split_by_number'
    assert len(list(cache.rglob('*.npz'))) < 100  # interrupted before the end
    train, test = build_dvs_datasets({'dataset': 'cifar10-dvs', 'data_dir': str(root), 'time_steps': 16,
                                      'num_classes': 10})
    assert len(train) + len(test) == len(list(cache.rglob('*.npz'))) == 100  # the next start rebuilds it


def test_an_interrupt_between_the_guarded_blocks_is_one_line_too():
    """A script's module-level code after its guarded imports and before run_cli (class definitions, argparse set-up)
    is covered by the excepthook that the guard installs: one line, exit 130, no traceback."""
    code = ('import sys; sys.path.insert(0, "."); from utils.errors import exit_on_interrupt\n'
            'with exit_on_interrupt("interrupted; nothing was written"):\n    import json\n'
            'raise KeyboardInterrupt\n')
    proc = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert_one_line(proc.returncode, proc.stderr)
    assert proc.stderr.strip() == 'error: interrupted; nothing was written'
    other = subprocess.run([sys.executable, '-c', code.replace('KeyboardInterrupt', 'ValueError("boom")')], cwd=REPO,
                           capture_output=True, text=True, timeout=60)
    assert other.returncode == 1 and 'Traceback' in other.stderr and 'boom' in other.stderr  # Python's own report
