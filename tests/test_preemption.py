"""Mid-epoch checkpoints (utils.training.preemption, utils.data.resumable_data): a run stopped by SIGUSR1 between two
optimizer steps, or killed after an interval save, continues from that step to the same final weights and summary.csv as
an uninterrupted run, bit for bit, with mixup, random erasing, gradient accumulation and loader workers on."""
import os
import signal
import subprocess

import pytest
import torch

import utils.training.engine
from helpers import (CIFAR10_YML, LAUNCH_VARIABLES, REPO, SCHEDULE, TINY, launcher, on_a_free_port, read_summary,
                     train_and_kill, write_cifar10)
from utils.training.main import train_main
from utils.training.preemption import check_in_epoch, resume_command

# 5 batches of 16 per epoch, steps after batches 2, 4 and 5 (the last group is partial); two loader workers
RECIPE = TINY + SCHEDULE + ['--epochs', '2', '--mixup', '0.8', '--cutmix', '1.0', '--reprob', '0.5',
                            '--grad-accum-steps', '2', '--workers', '2']


def _argv(data, out, *more):
    return ['--config', CIFAR10_YML, *RECIPE, '--data-dir', str(data), '--output', str(out), *more]


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return write_cifar10(tmp_path_factory.mktemp('cifar'), train=16)


@pytest.fixture(scope='module')
def uninterrupted(data, tmp_path_factory):
    out = tmp_path_factory.mktemp('ref') / 'run'
    train_main(_argv(data, out))
    return out


def assert_bitwise_same_run(folder, reference):
    last, ref = (torch.load(p / 'last.pth.tar', weights_only=True) for p in (folder, reference))
    assert last['epoch'] == ref['epoch'] and 'in_epoch' not in last
    for key, value in ref['state_dict'].items():
        assert torch.equal(last['state_dict'][key], value), key
    for a, b in zip(last['optimizer']['state'].values(), ref['optimizer']['state'].values()):
        assert all(torch.equal(a[k], b[k]) for k in b), a.keys()
    assert read_summary(folder) == read_summary(reference)


def _signal_at_step(monkeypatch, n: int, signum=signal.SIGUSR1):
    """The n-th optimizer step of the run sends ``signum`` to this process (as SLURM would, at any instant)."""
    step, calls = utils.training.engine.optimizer_step, []

    def signalling_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            os.kill(os.getpid(), signum)
        return step(*args, **kwargs)
    monkeypatch.setattr(utils.training.engine, 'optimizer_step', signalling_step)


def test_sigusr1_saves_mid_epoch_and_resume_is_bitwise_uninterrupted(data, uninterrupted, tmp_path, monkeypatch,
                                                                      capsys):
    out = tmp_path / 'run'
    _signal_at_step(monkeypatch, 4)  # epoch 1, after its first step (batch 2 of 5)
    with pytest.raises(SystemExit) as stopped:
        train_main(_argv(data, out))
    assert stopped.value.code == 128 + signal.SIGUSR1
    lines = [ln for ln in capsys.readouterr().out.splitlines() if 'SIGUSR1' in ln]
    assert len(lines) == 1 and 'epoch 1, after batch 2 of 5' in lines[0], lines
    assert f'--resume {out / "last.pth.tar"}' in lines[0]
    saved = torch.load(out / 'last.pth.tar', weights_only=True)
    assert saved['epoch'] == 0 and saved['in_epoch']['epoch'] == 1 and saved['in_epoch']['batch'] == 2
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # train_main gave the handlers back
    monkeypatch.undo()
    train_main(['--resume', str(out / 'last.pth.tar')])
    assert_bitwise_same_run(out, uninterrupted)


def test_interval_saves_survive_a_kill_and_resume_bitwise(data, uninterrupted, tmp_path):
    """--checkpoint-interval (here: at every step) saves atomically; killed right after the save of the first
    epoch's second step, the run resumes there."""
    out = tmp_path / 'run'
    train_and_kill(_argv(data, out, '--checkpoint-interval', '1e-9'), 'os.replace', 'last.pth.tar', 2, 'after')
    saved = torch.load(out / 'last.pth.tar', weights_only=True)
    assert saved['epoch'] == -1 and saved['in_epoch']['batch'] == 4
    train_main(['--resume', str(out / 'last.pth.tar'), '--checkpoint-interval', 'null'])
    assert_bitwise_same_run(out, uninterrupted)


def test_a_mid_epoch_state_needs_the_same_number_of_processes():
    state = dict(epoch=3, batch=4, steps=2, skipped=0, loss_sum=[1.0, 2.0], count=[8, 8])
    assert check_in_epoch(state, 'last.pth.tar', 3, 2, 1)['sums'] == dict(loss_sum=2.0, count=8, steps=2, skipped=0)
    with pytest.raises(Exception, match='(?s)2 process.*Resume with 2 process'):
        check_in_epoch(state, 'last.pth.tar', 3, 1, 0)
    with pytest.raises(Exception, match='damaged or belongs to another epoch'):
        check_in_epoch(state, 'last.pth.tar', 4, 2, 0)
    assert 'torchrun --nproc_per_node=2' in resume_command('run/last.pth.tar', 2)


# cifar10/train.py under torchrun; rank 0 alone gets SIGUSR1 at its n-th optimizer step (the other rank learns of it
# through the step-boundary all-reduce)
SIGNALLING_RANK = r"""
import os, signal, sys
sys.path.insert(0, {repo!r})
import utils.training.engine as engine
from utils.errors import run_cli
from utils.training.main import train_main

step, calls = engine.optimizer_step, []

def signalling_step(*args, **kwargs):
    calls.append(1)
    if len(calls) == {n} and os.environ['RANK'] == '0':
        os.kill(os.getpid(), signal.SIGUSR1)
    return step(*args, **kwargs)

engine.optimizer_step = signalling_step
run_cli(lambda argv: train_main(argv, {config!r}))
"""


def _torchrun(script, argv):
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES}
    env.update(OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')

    def start(port):
        proc = subprocess.run(launcher('torchrun') + ['--nproc_per_node=2', f'--master_port={port}', str(script)]
                              + [str(a) for a in argv], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=600)
        return [(proc.returncode, proc.stdout, proc.stderr)]
    return on_a_free_port(start)[0]


def test_two_processes_stop_together_and_resume_bitwise(tmp_path):
    """Each rank has 5 batches an epoch; rank 0 alone is signalled at its first step (after batch 2): both save that
    step (each rank's loss sums in the checkpoint), both stop, and two processes resume to the uninterrupted result."""
    data = write_cifar10(tmp_path / 'data', train=32)
    argv = ['--data-dir', str(data), '--workers', '0', '--epochs', '1', *TINY, *SCHEDULE, '--mixup', '0.8',
            '--cutmix', '1.0', '--reprob', '0.5', '--grad-accum-steps', '2']
    ref, out = tmp_path / 'ref', tmp_path / 'run'
    plain, signalling = tmp_path / 'plain.py', tmp_path / 'signalling.py'
    plain.write_text(SIGNALLING_RANK.format(repo=str(REPO), n=0, config=CIFAR10_YML))
    signalling.write_text(SIGNALLING_RANK.format(repo=str(REPO), n=1, config=CIFAR10_YML))
    code, stdout, stderr = _torchrun(plain, argv + ['--output', ref])
    assert code == 0, stdout[-2000:] + stderr[-2000:]
    code, stdout, stderr = _torchrun(signalling, argv + ['--output', out])
    assert code != 0 and 'SIGUSR1 received: saved epoch 0, after batch 2 of 5' in stdout, stdout[-2000:] + stderr
    saved = torch.load(out / 'last.pth.tar', weights_only=True)
    assert saved['in_epoch']['batch'] == 2 and len(saved['in_epoch']['count']) == 2
    code, stdout, stderr = _torchrun(plain, ['--resume', out / 'last.pth.tar'])
    assert code == 0, stdout[-2000:] + stderr[-2000:]
    assert_bitwise_same_run(out, ref)


def test_sigterm_during_evaluation_stops_after_the_epochs_checkpoint(data, uninterrupted, tmp_path, monkeypatch,
                                                                      capsys):
    import utils.training.main
    evaluate, calls = utils.training.main.evaluate, []

    def signalled_evaluate(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return evaluate(*args, **kwargs)
    monkeypatch.setattr(utils.training.main, 'evaluate', signalled_evaluate)
    out = tmp_path / 'run'
    with pytest.raises(SystemExit) as stopped:
        train_main(_argv(data, out))
    assert stopped.value.code == 128 + signal.SIGTERM
    assert 'SIGTERM received: saved the end of epoch 0' in capsys.readouterr().out
    assert len(read_summary(out)) == 1 and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    monkeypatch.undo()
    train_main(['--resume', str(out / 'last.pth.tar')])
    assert_bitwise_same_run(out, uninterrupted)
