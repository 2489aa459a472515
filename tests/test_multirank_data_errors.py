"""A failure of one process in the middle of a distributed epoch (a damaged sample read by rank 1 only, outside the
start-up's ``fail_together`` blocks) ends the run with that process's one message: the other process, whose gradient
all-reduce breaks when rank 1 exits, ends quietly with the same exit code instead of printing a gloo traceback
(``utils.training.distributed.share_failure``). Two gloo processes on CPU, started as ``srun`` starts them."""
import os
import subprocess
import sys

from helpers import CIFAR10_YML, LAUNCH_VARIABLES, REPO, TINY, free_port, write_cifar10
from utils.errors import EXIT_BAD_INPUT

# rank 1 reads a damaged sample in its third training batch (rank 0 has no such sample)
TASK = '''
import os, sys
sys.path.insert(0, {repo!r})
from utils.errors import DataError, run_cli
import utils.data.loaders
from utils.training.main import train_main
read, calls = utils.data.loaders.ArrayImages.__getitem__, []
def damaged_on_rank_1(self, index):
    calls.append(index)
    if os.environ['SLURM_PROCID'] == '1' and len(calls) > 20:
        raise DataError(f'cannot read sample {{index}}: damaged (rank 1)')
    return read(self, index)
utils.data.loaders.ArrayImages.__getitem__ = damaged_on_rank_1
run_cli(lambda argv: train_main(argv, {config!r}))
'''


def test_a_sample_that_fails_on_one_rank_mid_epoch_ends_the_run_with_one_message(tmp_path):
    data = write_cifar10(tmp_path / 'cifar', 16, test=16)
    args = ['--data-dir', str(data), '--output', str(tmp_path / 'run'), '--epochs', '1', '--warmup-epochs', '1',
            '--cooldown-epochs', '0', '--device', 'cpu'] + TINY + ['--batch-size', '8']
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES}
    env.update(OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore', SLURM_NTASKS='2', MASTER_PORT=str(free_port()),
               SLURM_JOB_NODELIST='localhost')
    code = TASK.format(repo=str(REPO), config=CIFAR10_YML)
    procs = [subprocess.Popen([sys.executable, '-c', code] + args, cwd=tmp_path, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=dict(env, SLURM_PROCID=str(r), SLURM_LOCALID=str(r)))
             for r in range(2)]
    results = [(p.returncode, out, err) for p, (out, err) in ((p, p.communicate(timeout=600)) for p in procs)]
    for rank, (exit_status, out, err) in enumerate(results):
        assert exit_status == EXIT_BAD_INPUT, (rank, out[-2000:] + err[-3000:])
        assert 'Traceback' not in out + err, (rank, err[-3000:])
    assert results[1][2].startswith('error: cannot read sample') and 'damaged (rank 1)' in results[1][2]
    assert 'error:' not in results[0][2], results[0][2]  # rank 0 prints no message of its own
