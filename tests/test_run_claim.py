"""One run per folder (utils.run.run_claim): two starts into one folder at the same moment, a second resume of a running
run, a stale claim after kill -9, and default folder names that never collide (finer time, SLURM ids, a random suffix,
an exclusive create).

The concurrency test starts two real processes of cifar10's train.py on a tiny model; both import everything first
and then wait for one signal file, so they reach the claim within milliseconds of each other.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from helpers import CIFAR10_YML, REPO, SCHEDULE, TINY, read_summary, refused, train_and_kill, write_cifar10
from utils.config import load_config
from utils.run import run_claim
from utils.training.main import default_output, train_main

# train.py's training after a barrier: every heavy import done, then wait for the signal file, then run.
STARTER = r"""
import os, sys, time
sys.path.insert(0, {repo!r})
import utils.training.main
from utils.errors import run_cli
go = {go!r}
open(os.path.join(os.path.dirname(go), 'ready%d' % os.getpid()), 'w').close()
while not os.path.exists(go):
    time.sleep(0.002)
run_cli(lambda argv: utils.training.main.train_main(argv, {config!r}))
"""

# a process that holds the claim of a folder, as a running training does, until it is killed
HOLDER = r"""
import sys, time
sys.path.insert(0, {repo!r})
from utils.run.run_claim import claim_folder
claim_folder({folder!r}, str, create=False)
print('held', flush=True)
time.sleep(600)
"""


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return write_cifar10(tmp_path_factory.mktemp('claim') / 'cifar')


def test_two_starts_into_one_folder_at_once_one_is_refused_naming_the_holder(data, tmp_path):
    folder, go = tmp_path / 'run', tmp_path / 'go'
    starter = tmp_path / 'starter.py'
    starter.write_text(STARTER.format(repo=str(REPO), go=str(go), config=CIFAR10_YML))
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    base = ['--data-dir', str(data), '--output', str(folder), '--epochs', '2'] + TINY + SCHEDULE[:4]
    procs = [subprocess.Popen([sys.executable, str(starter)] + base + ['--seed', str(seed)], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    try:
        deadline = time.monotonic() + 120
        while len(list(tmp_path.glob('ready*'))) < 2:  # both have imported everything
            failed = [p.communicate() for p in procs if p.poll() is not None]
            assert not failed and time.monotonic() < deadline, ('a starter ended before the signal', failed)
            time.sleep(0.05)
        go.write_text('')
        results = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 2], (codes, results)
    winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
    err = results[loser][1]
    assert err.startswith('error: ') and 'Traceback' not in err, err
    assert f'process {procs[winner].pid} on host' in err and str(folder) in err and 'in use' in err, err
    # the folder holds the winner's run alone: its config, its checkpoints, one start in the log, one row per epoch
    seed = (1, 2)[winner]
    assert yaml.safe_load((folder / 'args.yaml').read_text())['seed'] == seed
    assert torch.load(folder / 'last.pth.tar', weights_only=True)['args']['seed'] == seed
    log = (folder / 'log.txt').read_text()
    assert log.count(' parameters, T=') == 1 and log.count('done:') == 1, log
    assert [row['epoch'] for row in read_summary(folder)] == ['0', '1']
    assert not (folder / run_claim.LOCK_NAME).exists()  # released and removed at the end


def holding(folder: Path):
    """A process that holds ``folder``'s claim (as a running training does); the caller kills it."""
    proc = subprocess.Popen([sys.executable, '-c', HOLDER.format(repo=str(REPO), folder=str(folder))], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == 'held'
    return proc


def snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope='module')
def two_epochs(data, tmp_path_factory):
    folder = tmp_path_factory.mktemp('claim_run') / 'run'
    base = ['--config', CIFAR10_YML, '--data-dir', str(data)] + TINY + SCHEDULE
    train_main(base + ['--epochs', '2', '--output', str(folder)])
    return folder


def test_a_resume_of_a_running_run_is_refused_and_a_killed_holder_blocks_nothing(two_epochs, tmp_path, capsys):
    folder = tmp_path / 'run'
    subprocess.run(['cp', '-r', str(two_epochs), str(folder)], check=True)
    holder = holding(folder)
    try:
        before = {k: v for k, v in snapshot(folder).items() if k != run_claim.LOCK_NAME}
        refused(capsys, train_main, ['--resume', str(folder / 'last.pth.tar'), '--epochs', '3'],
                'still running', f'process {holder.pid} on host', str(folder))
        assert {k: v for k, v in snapshot(folder).items() if k != run_claim.LOCK_NAME} == before
        # a new run into the same folder is refused the same way (before the emptiness check, which names no one)
        refused(capsys, train_main, ['--config', CIFAR10_YML, '--output', str(folder), '--data-dir', str(tmp_path)]
                + TINY, 'in use by another run', f'process {holder.pid}')
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the kernel released the claim of the killed process: its stale lock file blocks nothing
    assert f'process {holder.pid}' in (folder / run_claim.LOCK_NAME).read_text()
    train_main(['--resume', str(folder / 'last.pth.tar'), '--epochs', '3'])
    assert [row['epoch'] for row in read_summary(folder)] == ['0', '1', '2']
    assert not (folder / run_claim.LOCK_NAME).exists()


@pytest.mark.skipif(not hasattr(os, 'fork'), reason='needs fork (POSIX)')
def test_a_training_killed_with_sigkill_resumes_at_once(data, tmp_path):
    folder = tmp_path / 'run'
    base = ['--config', CIFAR10_YML, '--data-dir', str(data)] + TINY + SCHEDULE
    train_and_kill(base + ['--epochs', '2', '--output', str(folder)], 'os.replace', 'last.pth.tar', 1, 'after')
    assert (folder / run_claim.LOCK_NAME).exists()  # left by the killed run, with its pid
    train_main(['--resume', str(folder / 'last.pth.tar')])
    assert [row['epoch'] for row in read_summary(folder)] == ['0', '1']


def test_a_refused_start_leaves_no_folder_behind(tmp_path, capsys, monkeypatch):
    folder = tmp_path / 'new'
    refused(capsys, train_main, ['--config', CIFAR10_YML, '--output', str(folder), '--data-dir',
                                 str(tmp_path / 'missing')] + TINY, 'missing')
    assert not folder.exists()
    monkeypatch.chdir(tmp_path)  # the default folder, output/train/<name>, and the parents made for it
    refused(capsys, train_main, ['--config', CIFAR10_YML, '--data-dir', str(tmp_path / 'missing')] + TINY, 'missing')
    assert not (tmp_path / 'output').exists()


def test_default_folder_names_are_unique_and_name_the_slurm_job(monkeypatch, tmp_path):
    cfg = load_config(['--config', CIFAR10_YML])
    monkeypatch.setattr(run_claim, 'timestamp', lambda: '20260101-000000.000')
    for name in ('SLURM_JOB_ID', 'SLURM_ARRAY_JOB_ID', 'SLURM_ARRAY_TASK_ID'):
        monkeypatch.delenv(name, raising=False)
    names = {default_output(cfg, 'train') for _ in range(50)}
    assert len(names) == 50  # the same millisecond: the random suffix tells them apart
    monkeypatch.setenv('SLURM_JOB_ID', '4242')
    assert '-job4242-' in default_output(cfg, 'train')
    monkeypatch.setenv('SLURM_ARRAY_JOB_ID', '77')
    monkeypatch.setenv('SLURM_ARRAY_TASK_ID', '3')
    assert '-job77_3-' in default_output(cfg, 'train')
    # created exclusively: a name that exists is never reused
    taken = tmp_path / 'output' / 'taken'
    taken.mkdir(parents=True)
    names = iter([str(taken), str(tmp_path / 'output' / 'fresh')])
    assert run_claim.make_default_folder(lambda: next(names)) == str(tmp_path / 'output' / 'fresh')


def test_two_runs_without_output_in_the_same_instant_get_two_folders(data, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(run_claim, 'timestamp', lambda: '20260101-000000.000')
    base = ['--config', CIFAR10_YML, '--data-dir', str(data), '--epochs', '1', '--warmup-epochs', '0',
            '--cooldown-epochs', '0', '--limit-train-batches', '1', '--limit-eval-batches', '1'] + TINY
    first, second = train_main(base)['output'], train_main(base)['output']
    assert first != second and os.path.isdir(first) and os.path.isdir(second)
    assert all(len(read_summary(Path(f))) == 1 for f in (first, second))


FORKING_HOLDER = r"""
import os, sys, time
sys.path.insert(0, {repo!r})
from utils.run.run_claim import claim_folder
claim_folder({folder!r}, str)
child = os.fork()  # as a DataLoader worker is forked
if child == 0:
    time.sleep(600)
    os._exit(0)
print(child, flush=True)
time.sleep(600)
"""


def test_a_forked_child_does_not_keep_a_killed_runs_claim(tmp_path):
    folder = tmp_path / 'run'
    proc = subprocess.Popen([sys.executable, '-c', FORKING_HOLDER.format(repo=str(REPO), folder=str(folder))],
                            cwd=REPO, stdout=subprocess.PIPE, text=True)
    child = int(proc.stdout.readline())
    try:
        assert run_claim.is_claimed(str(folder)) is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        os.kill(child, 0)  # the forked child is still alive ...
        assert run_claim.is_claimed(str(folder)) is None  # ... and holds nothing: the claim died with its maker
    finally:
        os.kill(child, signal.SIGKILL)


def test_a_file_system_without_locks_warns_and_trains(data, tmp_path, monkeypatch, capsys):
    import errno

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, 'No locks available')
    monkeypatch.setattr(run_claim.fcntl, 'flock', no_locks)
    folder = tmp_path / 'run'
    train_main(['--config', CIFAR10_YML, '--data-dir', str(data), '--output', str(folder), '--epochs', '1',
                '--warmup-epochs', '0', '--cooldown-epochs', '0', '--limit-train-batches', '1',
                '--limit-eval-batches', '1'] + TINY)
    assert 'does not support file locks' in capsys.readouterr().err
    assert len(read_summary(folder)) == 1
