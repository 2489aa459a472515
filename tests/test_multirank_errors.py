"""A failure in one process of a distributed run (rank 0's checks and writes of the run folder) stops every process
with one message and no traceback: two gloo processes on CPU, started by torchrun and as ``srun`` starts them."""
import os
import re
import subprocess
import sys

import pytest
import torch

from helpers import CIFAR10_YML, LAUNCH_VARIABLES, REPO, TINY, free_port, launcher, run, write_cifar10
from utils.errors import EXIT_BAD_INPUT
from utils.training.main import train_main

TRAIN = ['--epochs', '3', '--warmup-epochs', '1', '--cooldown-epochs', '0', '--device', 'cpu'] + TINY + \
    ['--batch-size', '8']
# The processes as `srun` starts them; `torch.save` fails (a full disk) from its `fail_from`-th call on.
SRUN_TASK = '''
import sys
sys.path.insert(0, {repo!r})
import torch
from utils.errors import run_cli
from utils.training.main import train_main
save, calls = torch.save, []
def save_until_full(obj, path):
    calls.append(path)
    if len(calls) >= {fail_from}:
        raise OSError(28, 'No space left on device')
    return save(obj, path)
torch.save = save_until_full
run_cli(lambda argv: train_main(argv, {config!r}))
'''


def srun_tasks(args, cwd, fail_from=10 ** 9):
    """Two tasks with SLURM's variables (no torchrun); returns ``[(exit code, stdout, stderr)]`` per rank."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES}
    env.update(OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore', SLURM_NTASKS='2', MASTER_PORT=str(free_port()),
               SLURM_JOB_NODELIST='localhost')
    code = SRUN_TASK.format(repo=str(REPO), config=CIFAR10_YML, fail_from=fail_from)
    procs = [subprocess.Popen([sys.executable, '-c', code] + args, cwd=cwd, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=dict(env, SLURM_PROCID=str(r), SLURM_LOCALID=str(r)))
             for r in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    return [(p.returncode, out, err) for p, (out, err) in zip(procs, outputs)]


def one_message(results, *parts) -> str:
    """Every process exited 2 without a traceback; exactly one printed the (one-screen) message."""
    for code, out, err in results:
        assert code == EXIT_BAD_INPUT, out[-2000:] + err[-2000:]
        assert 'Traceback' not in out + err, out[-2000:] + err[-2000:]
    messages = [err for _, _, err in results if 'error:' in err]
    assert len(messages) == 1 and messages[0].count('error:') == 1, messages
    assert len(messages[0].splitlines()) < 10
    for part in parts:
        assert part in messages[0], messages[0]
    return messages[0]


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return write_cifar10(tmp_path_factory.mktemp('cifar'), 16, test=16)


def test_a_non_empty_output_stops_every_process(data, tmp_path):
    out = tmp_path / 'taken'
    out.mkdir()
    (out / 'notes.txt').write_text('mine')
    one_message(srun_tasks(['--data-dir', str(data), '--output', str(out)] + TRAIN, tmp_path),
                f'--output {out} is not empty')
    assert os.listdir(out) == ['notes.txt']

    # torchrun: the workers as above; torchrun itself then reports its failed workers (its own ChildFailedError
    # traceback, which no worker can prevent), naming the process that printed the message as the root cause
    cmd = launcher('torchrun') + ['--nproc_per_node=2', f'--master_port={free_port()}', 'cifar10/train.py',
                                  '--data-dir', str(data), '--output', str(out)] + TRAIN
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert output.count('error:') == 1 and f'--output {out} is not empty' in output, output[-3000:]
    # no worker traceback: no frame of the project's own files (torchrun's frames lie in the environment, which may
    # live inside the checkout as .venv, as the README's commands make it)
    own_frames = re.findall(rf'File "{re.escape(str(REPO))}/(?!\.venv/)', output)
    assert '[rank' not in output and not own_frames, output[-3000:]
    root_cause = output.split('Root Cause')[1]
    assert 'rank      : 0' in root_cause and 'exitcode  : 2' in root_cause, output[-3000:]
    assert os.listdir(out) == ['notes.txt']


def test_a_failed_save_on_rank_0_stops_every_process(data, tmp_path):
    out = tmp_path / 'run'
    results = srun_tasks(['--data-dir', str(data), '--output', str(out)] + TRAIN, tmp_path, fail_from=2)
    one_message(results, 'cannot write', 'No space left on device', 'epoch 1 was not saved',
                f'--resume {out / "last.pth.tar"}')
    assert torch.load(out / 'last.pth.tar', weights_only=True)['epoch'] == 0
    assert results[1][1] == ''  # rank 1 printed nothing


def test_a_failed_append_to_the_log_warns_once(data, tmp_path, capsys):
    out = tmp_path / 'run'
    base = ['--config', CIFAR10_YML, '--data-dir', str(data)] + TRAIN[2:] + ['--limit-train-batches', '1']
    train_main(base + ['--epochs', '1', '--output', str(out)])
    (out / 'log.txt').unlink()
    (out / 'log.txt').mkdir()  # appending to it fails
    capsys.readouterr()
    code, err = run(train_main, base + ['--epochs', '2', '--resume', str(out / 'last.pth.tar')], capsys)
    assert code == 0
    assert err.count('warning: cannot append to') == 1 and 'log.txt' in err
    assert torch.load(out / 'last.pth.tar', weights_only=True)['epoch'] == 1
