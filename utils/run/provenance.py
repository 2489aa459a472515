"""How a run or an evaluation was made: :func:`run_provenance` and :func:`file_sha256`.

Every run folder, every ``test.py`` results file and every energy/spike report records the same fields, so that a
number can be traced to the code, the libraries and the machine that produced it:

- ``command``: the command line as typed (``sys.argv``, shell-quoted) and ``python``, the interpreter;
- ``git``: the commit of this repository and whether the tree had uncommitted changes to tracked files
  (``dirty``); ``None`` with a ``reason`` when the code does not run from a git checkout (a copied folder, a
  pip-installed tree) or git is missing, never an error;
- ``versions``: Python, torch, torchvision, timm, SpikingJelly, CuPy (``None`` when not installed) and NumPy, read
  from the installed distributions (``importlib.metadata``) so that no optional package is imported for it;
- ``host``: hostname, the devices used (CUDA device names, or ``cpu``) and the world size;
- ``started``: the start time, ISO 8601 in UTC.

Why not timm's ``get_outdir``/``summary``: timm records no provenance; this is the project's own record.
"""
import datetime
import importlib.metadata
import hashlib
import os
import platform
import shlex
import socket
import subprocess
import sys
from typing import Optional, Sequence

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGES = ('torch', 'torchvision', 'timm', 'spikingjelly', 'cupy', 'numpy')
CUPY_DISTRIBUTIONS = ('cupy', 'cupy-cuda12x', 'cupy-cuda11x', 'cupy-cuda13x')


def _distribution_version(name: str) -> Optional[str]:
    names = CUPY_DISTRIBUTIONS if name == 'cupy' else (name,)
    for distribution in names:
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def library_versions() -> dict:
    versions = {'python': platform.python_version()}
    versions.update({name: _distribution_version(name) for name in PACKAGES})
    return versions


def _git(args: Sequence[str], cwd: str) -> str:
    return subprocess.run(['git', *args], cwd=cwd, capture_output=True, text=True, timeout=20,
                          check=True).stdout.strip()


def git_state(repository: str = REPOSITORY) -> dict:
    """``{'commit', 'dirty'}`` of the checkout holding ``repository``, or ``{'commit': None, 'reason'}``.

    ``dirty`` counts changes to tracked files only: an untracked ``output/`` or ``data/`` folder beside the code
    does not change what ran."""
    try:
        top = _git(['rev-parse', '--show-toplevel'], repository)
        if os.path.realpath(top) != os.path.realpath(repository):
            return {'commit': None, 'dirty': None, 'reason': f'{repository} is not the top of a git checkout'}
        commit = _git(['rev-parse', 'HEAD'], repository)
        changes = _git(['status', '--porcelain', '--untracked-files=no'], repository)
    except FileNotFoundError:
        return {'commit': None, 'dirty': None, 'reason': 'git is not installed'}
    except (subprocess.SubprocessError, OSError) as error:
        detail = getattr(error, 'stderr', '') or str(error)
        return {'commit': None, 'dirty': None, 'reason': f'not a git checkout ({detail.strip()[:200]})'}
    return {'commit': commit, 'dirty': bool(changes)}


def device_names(device=None) -> list:
    """The CUDA device's name for a CUDA ``device`` (all visible ones when ``device`` is None), else ``['cpu']``."""
    import torch
    if device is not None and getattr(device, 'type', str(device)) != 'cuda':
        return ['cpu']
    if not torch.cuda.is_available():
        return ['cpu']
    if device is not None and getattr(device, 'index', None) is not None:
        return [torch.cuda.get_device_name(device.index)]
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def run_provenance(argv: Optional[Sequence[str]] = None, device=None, world_size: int = 1,
                   started: Optional[datetime.datetime] = None) -> dict:
    """The provenance record described in the module docstring (plain JSON/YAML types only)."""
    argv = list(sys.argv if argv is None else argv)
    started = started or datetime.datetime.now(datetime.timezone.utc)
    return {
        'command': {'argv': argv, 'line': shlex.join(argv), 'python': sys.executable, 'cwd': os.getcwd()},
        'git': git_state(),
        'versions': library_versions(),
        'host': {'hostname': socket.gethostname(), 'devices': device_names(device), 'world_size': int(world_size)},
        'started': started.isoformat(timespec='seconds'),
    }


def file_sha256(path: str, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks (checkpoints are hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(chunk), b''):
            digest.update(block)
    return digest.hexdigest()


RUN_RECORD = 'run.json'


def record_run_start(folder: str, record: dict) -> str:
    """Add this start's provenance to ``<folder>/run.json`` (``{"starts": [record, ...]}``), written atomically.

    A run folder's first start makes the file; every resume appends its own entry (``utils.training.main`` adds
    ``resumed_from``, the checkpoint it continues), so the first start is never overwritten. A ``run.json`` that is
    not this project's record (not JSON, or no ``starts`` list) is left as it is and the start refused, naming the
    file: nothing of it is lost. Returns the path."""
    import json

    from utils.run.atomic import replace_atomically
    from utils.errors import UserError

    path = os.path.join(folder, RUN_RECORD)
    starts = []
    if os.path.lexists(path):
        try:
            with open(path) as f:
                starts = json.load(f)['starts']
            if not isinstance(starts, list):
                raise TypeError('starts is not a list')
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f'{path} is not a run record of this project ({e}): the run has not started, and the '
                            f'file is left as it is.\nMove it out of the run folder, then start again.') from None

    def write(tmp):
        with open(tmp, 'w') as f:
            json.dump({'starts': starts + [record]}, f, indent=2)
            f.write('\n')
    replace_atomically(path, write)
    return path
