"""Clusters: SLURM's host lists and task variables, and two processes started as ``srun`` starts them (no torchrun),
on CPU with gloo, training one epoch with gradient accumulation (N = 2, so DDP's no_sync is exercised)."""
import os
import subprocess
import sys

import pytest
import torch
import yaml

from test_distributed import free_port
from test_engine import CIFAR10_YML, REPO, TINY, read_summary, run, write_cifar10
from utils.config import load_config
from utils.distributed import init_distributed
from utils.errors import EXIT_BAD_INPUT, UserError
from utils.main import train_main
from utils.slurm import DEFAULT_PORT, expand_nodelist, slurm_task

LAUNCH_VARIABLES = ('WORLD_SIZE', 'RANK', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT', 'SLURM_PROCID', 'SLURM_NTASKS',
                    'SLURM_LOCALID', 'SLURM_JOB_NODELIST', 'SLURM_NODELIST')


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
    code, err = run(train_main, ['--config', CIFAR10_YML, '--device', 'cpu'], capsys)
    assert code == EXIT_BAD_INPUT and 'Traceback' not in err and len(err.splitlines()) < 10
    assert 'task 1 of 2' in err and 'MASTER_ADDR' in err and 'SLURM_JOB_NODELIST' in err


# Each process saves the weights it evaluates (after the epoch) beside the run: only rank 0 writes the run folder.
SPY = '''
import os, sys
sys.path.insert(0, {repo!r})
import torch
import utils.main as main
from utils.errors import run_cli
evaluate = main.evaluate
def spy(model, *args, **kwargs):
    torch.save(model.state_dict(), os.path.join({dump!r}, 'rank%s.pt' % os.environ['SLURM_PROCID']))
    return evaluate(model, *args, **kwargs)
main.evaluate = spy
run_cli(lambda argv: main.train_main(argv, {config!r}))
'''


def test_two_srun_tasks_train_one_epoch(tmp_path):
    data = write_cifar10(tmp_path / 'cifar', train_per_batch=16, test=40)  # 80 images: 5 batches of 8 per rank
    dump, work = tmp_path / 'weights', tmp_path / 'work'
    dump.mkdir()
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES}
    env.update(OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore', SLURM_NTASKS='2', MASTER_PORT=str(free_port()),
               SLURM_JOB_NODELIST='localhost,node[02-03]')
    code = SPY.format(repo=str(REPO), dump=str(dump), config=CIFAR10_YML)
    args = ['--data-dir', str(data), '--epochs', '1', '--warmup-epochs', '1', '--cooldown-epochs', '0',
            '--device', 'cpu'] + TINY + ['--batch-size', '8', '--grad-accum-steps', '2']
    procs = [subprocess.Popen([sys.executable, '-c', code] + args, cwd=work, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=dict(env, SLURM_PROCID=str(r), SLURM_LOCALID=str(r)))
             for r in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:] + err[-3000:]
    assert outputs[1][0] == ''  # rank 1 prints nothing
    assert '2 process(es)' in outputs[0][0]
    assert 'global batch 8 x 2 x 2 = 32' in outputs[0][0]
    runs = os.listdir(work / 'output' / 'train')
    assert len(runs) == 1
    out = work / 'output' / 'train' / runs[0]
    assert sorted(p for p in os.listdir(out) if not p.startswith('events.')) == \
        ['args.yaml', 'last.pth.tar', 'log.txt', 'model_best.pth.tar', 'summary.csv']
    assert [r['epoch'] for r in read_summary(out)] == ['0']
    assert yaml.safe_load((out / 'args.yaml').read_text())['grad_accum_steps'] == 2
    ranks = [torch.load(dump / f'rank{r}.pt', weights_only=True) for r in range(2)]
    saved = torch.load(out / 'last.pth.tar', weights_only=True)['state_dict']
    for key, value in ranks[0].items():
        assert torch.equal(value, ranks[1][key]), key
        assert torch.equal(value, saved[key]), key
