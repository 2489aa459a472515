"""What many test files need, defined once: the repository's paths, the tiny model's options, loading a script file
as a module, the "exit 2, one screen, no traceback" check, synthetic CIFAR-10 pickles and event frames, a run's
summary.csv, a training killed at a chosen write and the "resumed equals uninterrupted" check, and ports for local
two-process rendezvous."""
import csv
import functools
import importlib.util
import json
import os
import pickle
import signal
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
    file name each), to stand in for ``utils.data.dvs_data.build_dvs_datasets``' splits."""

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


def assert_same_run(folder: Path, reference: Path):
    """The resumed run equals the uninterrupted one: last weights, gradient scaler (float16 runs), summary, best epoch
    and its weights."""
    last, ref_last = (torch.load(p / 'last.pth.tar', weights_only=True) for p in (folder, reference))
    assert last['epoch'] == ref_last['epoch'] and last['best_epoch'] == ref_last['best_epoch']
    for key, value in ref_last['state_dict'].items():
        torch.testing.assert_close(last['state_dict'][key], value, rtol=0, atol=1e-6, msg=key)
    assert last.get('amp_scaler') == ref_last.get('amp_scaler')
    assert read_summary(folder) == read_summary(reference)
    best, ref_best = (torch.load(p / 'model_best.pth.tar', weights_only=True) for p in (folder, reference))
    assert best['epoch'] == ref_best['epoch'] == ref_last['best_epoch']
    for key, value in ref_best['state_dict'].items():
        torch.testing.assert_close(best['state_dict'][key], value, rtol=0, atol=1e-6, msg=key)
    assert not [p for p in os.listdir(folder) if '.tmp' in p]


KILLED_CHILD_TIMEOUT = 300  # seconds for a forked training to reach its kill point (it takes about one)



def tiny_cifar_run(root: Path, epochs: int) -> Tuple[Path, Path]:
    """A finished tiny CIFAR-10 run of ``epochs`` epochs in ``root/run`` on stand-in data in ``root/cifar``;
    returns ``(data folder, run folder)``."""
    from utils.training.main import train_main
    data = write_cifar10(root / 'cifar')
    train_main(['--config', CIFAR10_YML, '--data-dir', str(data)] + TINY + SCHEDULE +
               ['--epochs', str(epochs), '--output', str(root / 'run')])
    return data, root / 'run'


def train_and_kill(argv, function: str, written: str, n: int, when: str) -> None:
    """Fork; the child runs ``train_main(argv)`` and SIGKILLs itself at the n-th call of ``function`` ('os.replace',
    'os.link' or 'torch.save') that writes a file whose name starts with ``written``, ``when`` 'before' or 'after'
    the call. The child inherits the test's monkeypatches (no interpreter start-up); needs fork (POSIX)."""
    from utils.training.main import train_main
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            module, name = function.split('.')
            target = {'os': os, 'torch': torch}[module]
            original, calls = getattr(target, name), []

            def wrapper(*args, **kwargs):
                hit = os.path.basename(str(args[1])).startswith(written)
                if hit:
                    calls.append(1)
                if hit and len(calls) == n and when == 'before':
                    os.kill(os.getpid(), signal.SIGKILL)
                result = original(*args, **kwargs)
                if hit and len(calls) == n and when == 'after':
                    os.kill(os.getpid(), signal.SIGKILL)
                return result

            setattr(target, name, wrapper)
            train_main(argv)
            code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + KILLED_CHILD_TIMEOUT
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f'the forked training did not reach its kill point within {KILLED_CHILD_TIMEOUT} s')
        time.sleep(0.05)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status


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


class CountingEma:
    """Stands in for an EMA given to ``train_one_epoch``: counts its updates (one per optimizer step taken)."""

    def __init__(self):
        self.updates = 0

    def update(self, model):
        self.updates += 1


class EagerScaler(torch.amp.GradScaler):
    """A gradient scaler that doubles its scale after every good step (``growth_interval`` 1 instead of 2000), so that
    a run of a few batches overflows float16 gradients, skips steps and backs off, as a long CUDA run does over
    thousands of steps. Tests put it in place of ``torch.amp.GradScaler``, which ``utils.training.main.amp_setup``
    builds."""

    def __init__(self, device: str = 'cuda', **kwargs):
        super().__init__(device, **{**kwargs, 'growth_interval': 1})


# cifar10/train.py's training in each process of a torchrun, with EagerScaler, under a spy that records per rank each
# epoch's train_one_epoch result and the weights the rank evaluates after its last epoch.
RANK_SPY = r"""
import json, os, sys
sys.path.insert(0, {repo!r})
sys.path.insert(0, {tests!r})
import torch
import utils.training.main as main
from helpers import EagerScaler
from utils.errors import run_cli

torch.amp.GradScaler = EagerScaler
RANK, DUMP = os.environ['RANK'], {dump!r}
evaluate, train_one_epoch, epochs = main.evaluate, main.train_one_epoch, []


def evaluate_spy(model, *args, **kwargs):
    torch.save(model.state_dict(), os.path.join(DUMP, 'weights%s.pt' % RANK))
    return evaluate(model, *args, **kwargs)


def train_spy(*args, **kwargs):
    result = train_one_epoch(*args, **kwargs)
    epochs.append(result)
    with open(os.path.join(DUMP, 'epochs%s.json' % RANK), 'w') as f:
        json.dump(epochs, f)
    return result


main.evaluate, main.train_one_epoch = evaluate_spy, train_spy
run_cli(lambda argv: main.train_main(argv, {config!r}))
"""


def two_process_training(root: Path, argv: Sequence[str], timeout: float = 600) -> dict:
    """Two processes under torchrun train with cifar10/train.py's config, ``argv`` and :class:`EagerScaler` (see
    ``RANK_SPY``); returns ``dict(stdout, epochs=[rank 0's, rank 1's train results], weights=[...])``."""
    dump = root / 'spy'
    dump.mkdir(parents=True)
    worker = root / 'rank_spy.py'
    worker.write_text(RANK_SPY.format(repo=str(REPO), tests=str(REPO / 'tests'), dump=str(dump),
                                      config=CIFAR10_YML))
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES}
    env.update(OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')

    def start(port):
        proc = subprocess.run(launcher('torchrun') + ['--nproc_per_node=2', f'--master_port={port}', str(worker)]
                              + list(argv), cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        return [(proc.returncode, proc.stdout, proc.stderr)]

    [(code, stdout, stderr)] = on_a_free_port(start)
    assert code == 0, stdout[-3000:] + stderr[-3000:]
    return dict(stdout=stdout, epochs=[json.loads((dump / f'epochs{r}.json').read_text()) for r in range(2)],
                weights=[torch.load(dump / f'weights{r}.pt', map_location='cpu', weights_only=True)
                         for r in range(2)])


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


# ------------------------------------------------------------------ the published code's reference records
def lif_rates(model: torch.nn.Module) -> dict:
    """Hooks every LIF of ``model``: the returned dict fills, at each forward, with each LIF's firing rate by name."""
    import models
    rates = {}
    for name, module in model.named_modules():
        if isinstance(module, models.LIF):
            module.register_forward_hook(functools.partial(
                lambda n, m, i, o: rates.__setitem__(n, o.float().mean().item()), name))
    return rates


def assert_reference_training_step(model: torch.nn.Module, reference: dict, own_name, unbuilt=None) -> None:
    """One training step of ``model`` (in ``train()`` mode) gives the record's train logits, loss and the gradient of
    every trainable parameter (relative error 1e-3 against a floor of 1e-4 of the largest gradient norm: biases right
    before BatchNorm have a true gradient of zero, so their stored gradients are rounding noise). ``own_name`` maps a
    published parameter name to this model's; ``unbuilt(own)`` says a published parameter is not built here (it
    must then be absent)."""
    logits = model(reference['input'])
    torch.testing.assert_close(logits, reference['logits_train'], atol=1e-4, rtol=0)
    loss = torch.nn.functional.cross_entropy(logits, reference['target'])
    assert loss.item() == pytest.approx(float(reference['loss']), abs=1e-5)
    loss.backward()
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    floor = 1e-4 * max(g.norm() for g in reference['grads'].values())
    checked = 0
    for name, expected in reference['grads'].items():
        own = own_name(name)
        if unbuilt is not None and own not in params:
            assert unbuilt(own), name
            continue
        grad = params[own].grad.reshape(expected.shape)  # the Spikformer DVS file's Conv1d MLP weights are Conv2d here
        err = (grad - expected).norm() / max(expected.norm(), floor)
        assert err < 1e-3, (name, err.item())
        checked += 1
    assert checked == len(params)
