"""Ctrl-C prints one line and exits 130, whatever the entry point is doing: importing, starting DataLoader workers,
training with them, building the frame cache, converting raw event data.

Each case starts the script in its own process group and sends SIGINT to the whole group, as a terminal's Ctrl-C
does (DataLoader workers and SpikingJelly's threads see it too), at an instant found by waiting for a line of the
script's output. A process killed by the default SIGINT action after its line was printed (a second Ctrl-C in the
last moments of Python's shutdown, when no handler is left) counts as 130, as a shell reports it.
"""
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = ['--embed-dims', '32', '--depths', '1', '--num-heads', '2', '--no-amp', '--threads', '1', '--workers', '2',
        '--cooldown-epochs', '0', '--warmup-epochs', '0', '--epochs', '50', '--log-interval', '1']


def interrupt(argv, after_line=None, delay=0.0, again=None):
    """Run ``python argv...``; SIGINT its process group ``delay`` s after the first output line containing
    ``after_line`` (or after the start), a second one ``again`` s later; returns (exit code, stderr)."""
    proc = subprocess.Popen([sys.executable] + [str(a) for a in argv], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        if after_line is not None:
            for line in proc.stdout:
                if after_line in line:
                    break
            else:
                pytest.fail(f'{argv[0]} ended before printing {after_line!r}: {proc.stderr.read()[-2000:]}')
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
    return proc.returncode, err


def assert_one_line(code, err):
    assert code in (130, -signal.SIGINT), (code, err)
    assert len(err.splitlines()) == 1 and err.startswith('error: interrupted') and 'Traceback' not in err, err


@pytest.fixture(scope='module')
def cifar(tmp_path_factory):
    """CIFAR-10 pickles with enough samples for an epoch that outlasts the signal."""
    root = tmp_path_factory.mktemp('cifar')
    folder = root / 'cifar-10-batches-py'
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, n in [(f'data_batch_{i}', 200) for i in range(1, 6)] + [('test_batch', 100)]:
        batch = {'data': rng.integers(0, 256, (n, 3072)).astype(np.uint8), 'labels': rng.integers(0, 10, n).tolist()}
        (folder / name).write_bytes(pickle.dumps(batch))
    return root


@pytest.mark.parametrize('after_line, delay, again', [
    (None, 0.3, None),            # importing torch, timm, SpikingJelly
    ('parameters', 0.0, None),    # the run is set up: the DataLoader is forking its workers
    ('epoch 0 [', 0.0, 0.05),     # training with workers; a second Ctrl-C while it winds down
], ids=['imports', 'workers-starting', 'training-twice'])
def test_train_py(cifar, tmp_path, after_line, delay, again):
    argv = ['cifar10/train.py', '--data-dir', cifar, '--img-size', '16', '-T', '1', '--batch-size', '16',
            '--output', tmp_path / 'run'] + TINY
    assert_one_line(*interrupt(argv, after_line, delay, again))


def test_frame_cache_building_and_prepare_dvs(tmp_path):
    from utils.dvs_data import build_dvs_datasets
    raw, root = tmp_path / 'raw', tmp_path / 'root'
    # while prepare_dvs.py writes synthetic raw data (no torch: its imports are quick)
    assert_one_line(*interrupt(['scripts/prepare_dvs.py', 'cifar10-dvs', '--synthetic', '--raw', raw, '--root', root,
                                '--per-class', '60', '--no-progress'], delay=1.0))
    assert not (root / 'events_np').exists()
    done = subprocess.run([sys.executable, 'scripts/prepare_dvs.py', 'cifar10-dvs', '--synthetic', '--raw',
                           tmp_path / 'raw10', '--root', root, '--per-class', '10', '--no-progress'], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # while SpikingJelly's threads integrate the frames: the samples not started are cancelled
    argv = ['cifar10-dvs/train.py', '--data-dir', root, '--batch-size', '4', '--output', tmp_path / 'run'] + TINY
    start = time.time()
    assert_one_line(*interrupt(argv, 'integrating', 0.05))
    assert time.time() - start < 60
    cache = root / 'frames_number_16_split_by_number'
    assert len(list(cache.rglob('*.npz'))) < 100  # interrupted before the end
    train, test = build_dvs_datasets({'dataset': 'cifar10-dvs', 'data_dir': str(root), 'time_steps': 16,
                                      'num_classes': 10})
    assert len(train) + len(test) == len(list(cache.rglob('*.npz'))) == 100  # the next start rebuilds it
