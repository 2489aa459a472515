"""Clusters: SLURM's host lists and task variables, and two processes started as ``srun`` starts them (no torchrun),
on CPU with gloo, training one epoch with gradient accumulation (N = 2, so DDP's no_sync is exercised)."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from helpers import (CIFAR10_YML, LAUNCH_VARIABLES, REPO, TINY, finish, on_a_free_port, read_summary, refused,
                     write_cifar10)
from utils.config import load_config
from utils.errors import UserError
from utils.training.distributed import init_distributed
from utils.training.main import train_main
from utils.training.slurm import DEFAULT_PORT, expand_nodelist, slurm_task

def test_compressed_host_lists():
    assert expand_nodelist('node[01-04,07]') == ['node01', 'node02', 'node03', 'node04', 'node07']
    assert expand_nodelist('gpu-a[1,3],gpu-b2') == ['gpu-a1', 'gpu-a3', 'gpu-b2']
    assert expand_nodelist('localhost') == ['localhost']
    assert expand_nodelist('r[1-2]-n[8-9],login') == ['r1-n8', 'r1-n9', 'r2-n8', 'r2-n9', 'login']
    assert expand_nodelist('n[098-101]') == ['n098', 'n099', 'n100', 'n101']
    for bad in ('node[1-', 'node[a-b]', 'node[3-1]', 'node]1['):
        with pytest.raises(ValueError):
            expand_nodelist(bad)


def test_task_variables():
    env = dict(SLURM_PROCID='5', SLURM_NTASKS='8', SLURM_LOCALID='1', SLURM_JOB_NODELIST='gpu[03-04]')
    task = slurm_task(env)
    assert (task.rank, task.world, task.local_rank, task.master_addr, task.master_port) == (5, 8, 1, 'gpu03',
                                                                                         DEFAULT_PORT)
    assert task.init_method == f'tcp://gpu03:{DEFAULT_PORT}'
    task = slurm_task(dict(env, MASTER_ADDR='10.0.0.7', MASTER_PORT='12345'))
    assert task.init_method == 'tcp://10.0.0.7:12345'
    assert slurm_task(dict(env, MASTER_ADDR='fe80::1')).init_method == f'tcp://[fe80::1]:{DEFAULT_PORT}'
    assert slurm_task({}) is None
    assert slurm_task(dict(env, SLURM_NTASKS='1')) is None  # one task: no process group
    assert slurm_task(dict(SLURM_NTASKS='8')) is None  # an salloc shell, not a task
    with pytest.raises(UserError, match='MASTER_ADDR'):
        slurm_task(dict(SLURM_PROCID='1', SLURM_NTASKS='2'))
    with pytest.raises(UserError, match='SLURM_NTASKS|number'):
        slurm_task(dict(SLURM_PROCID='1', SLURM_NTASKS='two'))


def _clear_launch_variables(monkeypatch):
    for name in LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_torchrun_variables_win_and_a_missing_address_is_a_message(monkeypatch, capsys):
    _clear_launch_variables(monkeypatch)
    monkeypatch.setenv('SLURM_PROCID', '1')
    monkeypatch.setenv('SLURM_NTASKS', '2')
    monkeypatch.setenv('WORLD_SIZE', '1')  # a torchrun with one process inside a SLURM job: no rendezvous
    assert init_distributed(load_config(['--device', 'cpu'])).world == 1
    monkeypatch.delenv('WORLD_SIZE')
    err = refused(capsys, train_main, ['--config', CIFAR10_YML, '--device', 'cpu'], 'task 1 of 2', 'MASTER_ADDR',
                  'SLURM_JOB_NODELIST')
    assert len(err.splitlines()) < 10


# The two tasks run train.py's code under a spy that records, per rank: the weights each rank evaluates (after the
# epoch), each rank's own BatchNorm statistics when its training loop ends (and their average over the ranks, the
# --dist-bn reduce option), how many backward passes all-reduce the gradients (a DDP communication hook, installed
# on every DistributedDataParallel the run builds), and every file written or removed under the working folder.
SPY = r"""
import builtins, copy, io, json, os, shutil, sys
sys.path.insert(0, {repo!r})
import torch
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel
import utils.training.main as main
from utils.errors import run_cli
from utils.training.distributed import sync_bn_stats

RANK, DUMP, WORK = os.environ['SLURM_PROCID'], {dump!r}, {work!r}
record = dict(syncs=0, writes=[])


def counting_hook(state, bucket):
    record['syncs'] += bucket.is_last()  # one per backward pass that all-reduces (every bucket is reduced then)
    return allreduce_hook(None, bucket)


ddp_init = DistributedDataParallel.__init__


def ddp_with_hook(self, *args, **kwargs):
    ddp_init(self, *args, **kwargs)
    self.register_comm_hook(None, counting_hook)


DistributedDataParallel.__init__ = ddp_with_hook


def written(path):
    if isinstance(path, (str, os.PathLike)):
        path = os.path.abspath(os.fspath(path))
        if path.startswith(WORK + os.sep):
            record['writes'].append(os.path.relpath(path, WORK))


def spy_on(owner, name, path_index, writes=lambda args, kwargs: True):
    original = getattr(owner, name)

    def spy(*args, **kwargs):
        if len(args) > path_index and writes(args, kwargs):
            written(args[path_index])
        return original(*args, **kwargs)
    setattr(owner, name, spy)
    return spy


def opens_to_write(args, kwargs):
    mode = args[1] if len(args) > 1 else kwargs.get('mode', 'r')
    return any(c in mode for c in 'wax+')


WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
io.open = spy_on(builtins, 'open', 0, opens_to_write)
spy_on(os, 'open', 0, lambda args, kwargs: (args[1] if len(args) > 1 else kwargs['flags']) & WRITE_FLAGS)
for name in ('replace', 'rename', 'link', 'symlink'):
    spy_on(os, name, 1)
for name in ('makedirs', 'mkdir', 'remove', 'unlink', 'rmdir'):
    spy_on(os, name, 0)
spy_on(shutil, 'copyfile', 1)
spy_on(torch, 'save', 1)

evaluate, train_one_epoch = main.evaluate, main.train_one_epoch


def evaluate_spy(model, *args, **kwargs):
    torch.save(model.state_dict(), os.path.join(DUMP, 'rank%s.pt' % RANK))
    return evaluate(model, *args, **kwargs)


def train_spy(model, *args, **kwargs):
    result = train_one_epoch(model, *args, **kwargs)
    own = model.module
    averaged = copy.deepcopy(own)
    sync_bn_stats(averaged, 'reduce', 2)
    torch.save({{'own': own.state_dict(), 'reduce': averaged.state_dict()}}, os.path.join(DUMP, 'bn%s.pt' % RANK))
    return result


main.evaluate, main.train_one_epoch = evaluate_spy, train_spy


def train(argv):
    result = main.train_main(argv, {config!r})
    with open(os.path.join(DUMP, 'record%s.json' % RANK), 'w') as f:
        json.dump(record, f)
    return result


run_cli(train)
"""


@pytest.fixture(scope='module')
def srun(tmp_path_factory):
    """Two tasks as ``srun`` starts them train one epoch: 80 images, so 5 batches of 8 per rank, in groups of
    --grad-accum-steps 2 (2, 2 and a last, partial group of 1)."""
    root = tmp_path_factory.mktemp('srun')
    data = write_cifar10(root / 'cifar', 16, test=40)
    dump, work = root / 'spy', root / 'work'
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES}
    env.update(OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore', SLURM_NTASKS='2',
               SLURM_JOB_NODELIST='localhost,node[02-03]')
    code = SPY.format(repo=str(REPO), dump=str(dump), work=str(work), config=CIFAR10_YML)
    args = ['--data-dir', str(data), '--epochs', '1', '--warmup-epochs', '1', '--cooldown-epochs', '0',
            '--device', 'cpu'] + TINY + ['--batch-size', '8', '--grad-accum-steps', '2']

    def start(port):
        for folder in (dump, work):
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
        return finish([subprocess.Popen([sys.executable, '-c', code] + args, cwd=work, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        env=dict(env, MASTER_PORT=str(port), SLURM_PROCID=str(r),
                                                 SLURM_LOCALID=str(r)))
                       for r in range(2)], timeout=600)

    outputs = on_a_free_port(start)
    for code, out, err in outputs:
        assert code == 0, out[-3000:] + err[-3000:]
    runs = os.listdir(work / 'output' / 'train')
    assert len(runs) == 1  # one run folder
    records = [json.loads((dump / f'record{r}.json').read_text()) for r in range(2)]
    return dict(stdout=[out for _, out, _ in outputs], out=work / 'output' / 'train' / runs[0], dump=dump,
                records=records)


def test_two_srun_tasks_train_one_epoch(srun):
    out, stdout = srun['out'], srun['stdout']
    assert stdout[1] == ''  # rank 1 prints nothing
    assert '2 process(es)' in stdout[0]
    assert 'global batch 8 x 2 x 2 = 32' in stdout[0]
    assert sorted(p for p in os.listdir(out) if not p.startswith('events.')) == \
        ['args.yaml', 'last.pth.tar', 'log.txt', 'model_best.pth.tar', 'run.json', 'summary.csv']
    assert json.loads((out / 'run.json').read_text())['starts'][0]['host']['world_size'] == 2  # one entry, rank 0's
    assert [r['epoch'] for r in read_summary(out)] == ['0']
    assert yaml.safe_load((out / 'args.yaml').read_text())['grad_accum_steps'] == 2
    ranks = [torch.load(srun['dump'] / f'rank{r}.pt', weights_only=True) for r in range(2)]
    saved = torch.load(out / 'last.pth.tar', weights_only=True)['state_dict']
    for key, value in ranks[0].items():
        assert torch.equal(value, ranks[1][key]), key
        assert torch.equal(value, saved[key]), key


def test_gradients_are_all_reduced_once_per_accumulation_group(srun):
    """no_sync on every batch of a group but its last: 5 batches with N = 2 all-reduce 3 times, not 5."""
    assert [record['syncs'] for record in srun['records']] == [3, 3]


def test_rank_0_alone_writes(srun):
    rank0, rank1 = (set(record['writes']) for record in srun['records'])
    assert rank1 == set()
    run = os.path.relpath(srun['out'], srun['out'].parents[2])
    assert {os.path.join(run, name) for name in ('args.yaml', 'log.txt', 'summary.csv', 'last.pth.tar',
                                                 'model_best.pth.tar')} <= rank0  # the spy does see the writes


def test_batchnorm_statistics_are_rank_0s_by_default(srun):
    """The published default (no --dist-bn): every rank evaluates, and rank 0 saves, rank 0's own BatchNorm
    statistics, not the average over the ranks (which --dist-bn reduce gives)."""
    own, reduced = zip(*((bn['own'], bn['reduce']) for bn in
                         (torch.load(srun['dump'] / f'bn{r}.pt', weights_only=True) for r in range(2))))
    evaluated = [torch.load(srun['dump'] / f'rank{r}.pt', weights_only=True) for r in range(2)]
    saved = torch.load(srun['out'] / 'last.pth.tar', weights_only=True)['state_dict']
    keys = [k for k in saved if k.endswith(('running_mean', 'running_var'))]
    assert keys and any(not torch.equal(own[0][k], own[1][k]) for k in keys)  # the ranks' statistics differ
    for key in keys:
        assert torch.equal(saved[key], own[0][key]), key
        assert torch.equal(evaluated[0][key], own[0][key]) and torch.equal(evaluated[1][key], own[0][key]), key
        torch.testing.assert_close(reduced[0][key], (own[0][key] + own[1][key]) / 2, msg=key)
        assert torch.equal(reduced[1][key], reduced[0][key]), key
