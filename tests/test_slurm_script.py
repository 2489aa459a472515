"""scripts/slurm_imagenet.sbatch: quotes $PYTHON, runs without SLURM_JOB_ID, continues its own run folder when it
holds last.pth.tar, and requeues itself after a SIGUSR1 stop (exit 138). srun, scontrol and the interpreter are
stand-ins that record how they were called."""
import os
import subprocess

import pytest

from helpers import REPO

SCRIPT = REPO / 'scripts' / 'slurm_imagenet.sbatch'


def _stand_in(path, exit_code=0):
    path.write_text(f'#!/bin/bash\necho "$(basename "$0") $*" >> "$CALLS"\nexit {exit_code}\n')
    path.chmod(0o755)


def _run(tmp_path, env_extra, python_exit=0):
    bin_dir = tmp_path / 'bin dir'  # a space in the interpreter's path: $PYTHON must be quoted
    bin_dir.mkdir(exist_ok=True)
    _stand_in(bin_dir / 'my python', python_exit)
    for tool in ('srun', 'scontrol'):
        (bin_dir / tool).write_text('#!/bin/bash\necho "$(basename "$0") $*" >> "$CALLS"\n'
                                    + ('exec "$@"\n' if tool == 'srun' else ''))
        (bin_dir / tool).chmod(0o755)
    calls = tmp_path / 'calls.txt'
    calls.write_text('')
    env = {k: v for k, v in os.environ.items() if not k.startswith('SLURM_')}
    env.update(PATH=f'{bin_dir}:{env["PATH"]}', PYTHON=str(bin_dir / 'my python'), CALLS=str(calls), **env_extra)
    proc = subprocess.run(['bash', str(SCRIPT), '--batch-size', '24'], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)
    return proc, calls.read_text().splitlines()


def test_without_slurm_it_runs_one_process_here(tmp_path):
    proc, calls = _run(tmp_path, {})
    assert proc.returncode == 0, proc.stderr
    assert len(calls) == 1 and calls[0].startswith('my python imagenet/train.py --workers 8 --config '
                                                   'imagenet/spikingformer_8_512.yml --data-dir data/imagenet '
                                                   '--output output/train/slurm-local-'), calls
    run = tmp_path / 'run'
    proc, calls = _run(tmp_path, dict(RUN=str(run)))
    assert calls == [f'my python imagenet/train.py --workers 8 --config imagenet/spikingformer_8_512.yml --data-dir '
                     f'data/imagenet --output {run} --batch-size 24']


@pytest.mark.parametrize('code,requeued', [(138, True), (143, False), (0, False)])
def test_under_slurm_a_sigusr1_stop_requeues_and_the_next_job_resumes(tmp_path, code, requeued):
    run = tmp_path / 'run'
    env = dict(SLURM_JOB_ID='4242', SLURM_CPUS_PER_TASK='6', RUN=str(run))
    proc, calls = _run(tmp_path, env, python_exit=code)
    assert calls[0].startswith('srun ') and calls[0].endswith(' dir/my python imagenet/train.py --workers 6 --config '
                                                              f'imagenet/spikingformer_8_512.yml --data-dir '
                                                              f'data/imagenet --output {run} --batch-size 24')
    assert (f'scontrol requeue 4242' in calls) == requeued
    assert proc.returncode == (0 if requeued else code), proc.stderr
    run.mkdir()
    (run / 'last.pth.tar').write_bytes(b'')
    proc, calls = _run(tmp_path, env)
    assert calls[-1] == f'my python imagenet/train.py --workers 6 --resume {run}/last.pth.tar --data-dir ' \
                        f'data/imagenet --batch-size 24'


def test_the_default_run_folder_is_named_after_the_job(tmp_path):
    proc, calls = _run(tmp_path, dict(SLURM_JOB_ID='77'))
    assert '--output output/train/slurm-77 ' in calls[-1], calls
