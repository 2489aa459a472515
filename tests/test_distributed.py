"""Two-process data-parallel training on CPU (gloo), launched as users launch it: torchrun and
``python -m torch.distributed.launch`` (which passes ``--local-rank``)."""
import json
import os
import subprocess

import pytest
import torch

from helpers import REPO, TINY, launcher, on_a_free_port, read_summary, run, write_cifar10
from utils.training.main import test_main as evaluate_main  # not named test_* (pytest would collect it)


@pytest.fixture(scope='module')
def ddp_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp('ddp')
    data = write_cifar10(root / 'cifar', 16, test=41)  # 41: the ranks evaluate 21 + 20 samples
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    runs = {}
    for name in ('torchrun', 'launch'):
        out = root / name

        def start(port):
            cmd = launcher(name) + ['--nproc_per_node=2', f'--master_port={port}', 'cifar10/train.py',
                                    '--data-dir', str(data), '--output', str(out), '--epochs', '2',
                                    '--warmup-epochs', '2', '--cooldown-epochs', '0', '--device', 'cpu'] + TINY + \
                ['--batch-size', '8']
            proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
            return [(proc.returncode, proc.stdout, proc.stderr)]

        [(code, stdout, stderr)] = on_a_free_port(start)
        assert code == 0, stdout[-3000:] + stderr[-3000:]
        runs[name] = dict(out=out, stdout=stdout, data=data)
    return runs


@pytest.mark.parametrize('name', ['torchrun', 'launch'])
def test_two_processes_train_into_one_run_folder(ddp_runs, name):
    """Both launchers; that rank 1 writes nothing is checked file by file in test_slurm.py."""
    out, stdout = ddp_runs[name]['out'], ddp_runs[name]['stdout']
    rows = read_summary(out)
    assert [r['epoch'] for r in rows] == ['0', '1']
    assert stdout.count('epoch 1: train loss') == 1, stdout  # rank 1 prints nothing
    assert '2 process(es)' in stdout
    assert sorted(p for p in os.listdir(out) if not p.startswith('events.')) == \
        ['args.yaml', 'last.pth.tar', 'log.txt', 'model_best.pth.tar', 'run.json', 'summary.csv']


def test_both_launchers_give_the_same_run(ddp_runs):
    a = torch.load(ddp_runs['torchrun']['out'] / 'last.pth.tar', weights_only=True)['state_dict']
    b = torch.load(ddp_runs['launch']['out'] / 'last.pth.tar', weights_only=True)['state_dict']
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_distributed_evaluation_is_exact(ddp_runs, tmp_path, capsys):
    """The sharded, rank-summed evaluation during training equals one process evaluating the saved weights."""
    out = ddp_runs['torchrun']['out']
    code, _ = run(evaluate_main, ['--checkpoint', str(out / 'last.pth.tar'), '--output', str(tmp_path),
                                  '--device', 'cpu'], capsys)
    assert code == 0
    results = json.loads((tmp_path / 'results.json').read_text())
    last = read_summary(out)[-1]
    assert results['samples'] == 41
    assert results['top1'] == pytest.approx(float(last['eval_top1']), abs=1e-9)
    assert results['loss'] == pytest.approx(float(last['eval_loss']), rel=1e-5)
