"""What many test files need, defined once: the repository's paths, the tiny model's options, loading a script file
as a module, the "exit 2, one screen, no traceback" check, synthetic CIFAR-10 pickles and event frames, a run's
summary.csv, and ports for local two-process rendezvous."""
import csv
import functools
import importlib.util
import pickle
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, List, Sequence, Tuple, Union

import numpy as np
import pytest
import torch

from utils.errors import EXIT_BAD_INPUT, run_cli

REPO = Path(__file__).resolve().parents[1]
CIFAR10_YML = str(REPO / 'cifar10' / 'cifar10.yml')
IMAGENET_YML = str(REPO / 'imagenet' / 'imagenet.yml')

TINY_MODEL = ['--embed-dims', '32', '--depths', '1', '--num-heads', '2']
# a tiny model on 16x16 images, one time step, in this process (no workers), float32
TINY = TINY_MODEL + ['-T', '1', '--img-size', '16', '--batch-size', '16', '--val-batch-size', '16', '--workers', '0',
                     '--amp', 'false']
# The first epochs of a 2- and a 3-epoch schedule must have the same learning rates for the resume comparisons:
# they do inside the linear warmup, which does not depend on the schedule's length.
SCHEDULE = ['--warmup-epochs', '5', '--cooldown-epochs', '0', '--seed', '3']
# The report scripts' config (a YAML file or a checkpoint's args) for a tiny model on the digits data.
TINY_DIGITS_CONFIG = dict(model='spikingformer_cifar_4_256', num_classes=10, time_steps=2, num_heads=2, embed_dims=32,
                          depths=1, dataset='digits', img_size=16, batch_size=32, val_batch_size=40, workers=0,
                          amp=False, neuron_backend='torch', device='cpu')


@functools.lru_cache(maxsize=None)
def load_script(name: str):
    """``scripts/<name>.py`` as a module (the scripts are files, not a package); loaded once per session."""
    spec = importlib.util.spec_from_file_location(name, REPO / 'scripts' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(main, argv, capsys=None) -> Tuple[int, str]:
    """``run_cli`` as the scripts call it; returns (exit code, stderr)."""
    with pytest.raises(SystemExit) as e:
        run_cli(main, argv)
    err = capsys.readouterr().err if capsys is not None else ''
    return e.value.code, err


def refused(capsys, main, argv, *words: str) -> str:
    """``main(argv)`` run as a script runs it must stop with exit 2 and one screen: a message that starts with
    'error: ', has fewer than 25 lines, no traceback, and contains every one of ``words``. Returns the message."""
    code, err = run(main, argv, capsys)
    assert code == EXIT_BAD_INPUT, (code, err)
    assert 'Traceback' not in err and err.startswith('error: ') and len(err.splitlines()) < 25, err
    for word in words:
        assert word in err, (word, err)
    return err


def write_cifar10(root: Path, train: Union[int, Sequence[int]] = 16, test: int = 40, *, seed: int = 0,
                  label_max: int = 9, flat_levels=None) -> Path:
    """CIFAR-10 python pickles as the real data set has them (``cifar-10-batches-py/``: 5 training batches, a test
    batch, the meta file) under ``root``; returns ``root`` (the ``--data-dir``).

    ``train``: images per training batch, or each batch's number. Images are random with a learnable cue (the red
    channel is 25 x the label), labels random in 0..``label_max``. ``flat_levels``: instead, every batch holds one
    image per level, each a flat grey of that level, labelled ``i % 10``.
    """
    rng = np.random.default_rng(seed)
    folder = root / 'cifar-10-batches-py'
    folder.mkdir(parents=True)
    sizes = [train] * 5 if isinstance(train, int) else list(train)

    def batch(n):
        if flat_levels is not None:
            images = np.repeat(np.asarray(flat_levels, np.uint8)[:, None], 3 * 32 * 32, axis=1)
            return {'data': images, 'labels': [i % 10 for i in range(len(flat_levels))]}
        labels = rng.integers(0, label_max + 1, n)
        images = rng.integers(0, 256, (n, 3, 32, 32)).astype(np.uint8)
        images[:, 0] = (labels[:, None, None] * 25 % 256).astype(np.uint8)
        return {'data': images.reshape(n, -1), 'labels': labels.tolist()}

    for i, n in enumerate(sizes, start=1):
        (folder / f'data_batch_{i}').write_bytes(pickle.dumps(batch(n)))
    (folder / 'test_batch').write_bytes(pickle.dumps(batch(test)))
    (folder / 'batches.meta').write_bytes(pickle.dumps({'label_names': [f'class{i}' for i in range(10)]}))
    return root


class EventFrames(torch.utils.data.Dataset):
    """``n`` event samples as the DVS data sets give them (T=2 frames of 2 x 32 x 32 Poisson counts, 11 classes, a
    file name each), to stand in for ``utils.dvs_data.build_dvs_datasets``' splits."""

    def __init__(self, n: int):
        self.n, self.sample_files = n, [f'sample{i}.npz' for i in range(n)]

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.poisson(torch.full((2, 2, 32, 32), 0.5)), i % 11


def read_summary(folder: Path) -> list:
    """The rows of a run folder's summary.csv (as strings)."""
    with open(folder / 'summary.csv', newline='') as f:
        return list(csv.DictReader(f))


def free_port() -> int:
    """A TCP port that is free now on 127.0.0.1. It is released before the caller's processes bind it, so another
    process may take it first: start the processes with :func:`on_a_free_port`."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


Result = Tuple[int, str, str]  # (exit code, stdout, stderr) of one process


def finish(procs: List[subprocess.Popen], timeout: float) -> List[Result]:
    """Wait for processes started with text pipes and return their results. When one fails, the others are killed
    (a rank whose peer is gone would wait for it until the rendezvous times out); all are killed, and the test
    fails, when they run past ``timeout`` seconds."""
    outputs: list = [('', '')] * len(procs)

    def collect(i):
        outputs[i] = procs[i].communicate()

    readers = [threading.Thread(target=collect, args=(i,), daemon=True) for i in range(len(procs))]
    for reader in readers:
        reader.start()
    deadline = time.monotonic() + timeout
    try:
        while any(p.poll() is None for p in procs):
            if time.monotonic() > deadline:
                pytest.fail(f'{len(procs)} processes still running after {timeout} s')
            if any(p.poll() not in (None, 0) for p in procs):
                break
            time.sleep(0.05)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for reader in readers:
            reader.join()
    return [(p.returncode, out, err) for p, (out, err) in zip(procs, outputs)]


def on_a_free_port(start: Callable[[int], List[Result]]) -> List[Result]:
    """``start(port)`` runs processes that meet on ``port`` and returns their results; when a process found the port
    taken meanwhile ('address already in use'), they run once more on another port."""
    results = start(free_port())
    if any(code != 0 and 'address already in use' in (out + err).lower() for code, out, err in results):
        results = start(free_port())
    return results


def launcher(name: str) -> list:
    """A distributed launcher's command line as users type it: 'torchrun' or 'launch' (torch.distributed.launch)."""
    if name == 'torchrun':
        torchrun = Path(sys.executable).parent / 'torchrun'
        return [str(torchrun)] if torchrun.exists() else [sys.executable, '-m', 'torch.distributed.run']
    return [sys.executable, '-m', 'torch.distributed.launch']


# The variables through which a launcher (torchrun, torch.distributed.launch, srun) tells a process its place: a test
# that starts processes itself removes them from the environment it inherits.
LAUNCH_VARIABLES = ('WORLD_SIZE', 'RANK', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT', 'SLURM_PROCID', 'SLURM_NTASKS',
                    'SLURM_LOCALID', 'SLURM_JOB_NODELIST', 'SLURM_NODELIST')
