"""Processes started by SLURM's ``srun`` (no torchrun): rank, world size, local rank and the rendezvous address.

``srun python imagenet/train.py ...`` starts one process per task and tells each its place through the environment:
``SLURM_PROCID`` (rank), ``SLURM_NTASKS`` (world size), ``SLURM_LOCALID`` (local rank, which picks the GPU). The
rendezvous host is ``MASTER_ADDR`` when set, else the first host of ``SLURM_JOB_NODELIST`` (rank 0 runs there:
srun's default block distribution fills the first node first); the port is ``MASTER_PORT``, else
:data:`DEFAULT_PORT` (torchrun's default; set ``MASTER_PORT`` when two jobs can share a node).

The host list is parsed here rather than by ``scontrol show hostnames``, which would need SLURM's binaries on every
compute node and a subprocess per rank. Only the tasks' environment is read: the batch script itself also has
``SLURM_PROCID=0`` and ``SLURM_NTASKS``, so ``python train.py`` run there without ``srun`` would wait for ranks that
never start; launch with ``srun`` (or torchrun, whose variables win).
"""
import itertools
import re
from dataclasses import dataclass
from typing import List, Mapping, Optional

from utils.errors import UserError

DEFAULT_PORT = 29500


@dataclass(frozen=True)
class SlurmTask:
    rank: int
    world: int
    local_rank: int
    master_addr: str
    master_port: int

    @property
    def init_method(self) -> str:
        host = f'[{self.master_addr}]' if ':' in self.master_addr else self.master_addr  # an IPv6 address
        return f'tcp://{host}:{self.master_port}'


def _split_top_level(text: str) -> List[str]:
    """``'a[1,3],b2'`` -> ``['a[1,3]', 'b2']``: commas outside brackets separate hosts."""
    parts, depth, current = [], 0, ''
    for char in text:
        if char == ',' and depth == 0:
            parts.append(current)
            current = ''
            continue
        depth += (char == '[') - (char == ']')
        if depth < 0:
            raise ValueError(f'unbalanced brackets in {text!r}')
        current += char
    if depth:
        raise ValueError(f'unbalanced brackets in {text!r}')
    return parts + [current]


def _expand_range(spec: str) -> List[str]:
    """``'01-03,07'`` -> ``['01', '02', '03', '07']`` (zero padding kept, as SLURM writes it)."""
    out = []
    for item in spec.split(','):
        match = re.fullmatch(r'(\d+)(?:-(\d+))?', item.strip())
        if not match:
            raise ValueError(f'bad range {item!r}')
        start, end = match.group(1), match.group(2) or match.group(1)
        if int(end) < int(start):
            raise ValueError(f'bad range {item!r}')
        out.extend(str(n).zfill(len(start)) for n in range(int(start), int(end) + 1))
    return out


def expand_nodelist(nodelist: str) -> List[str]:
    """SLURM's compressed host list, expanded in order: ``'node[01-02,07],gpu-b2'`` ->
    ``['node01', 'node02', 'node07', 'gpu-b2']``; several bracket groups in one name give their product."""
    hosts = []
    for part in _split_top_level(nodelist.strip()):
        if not part:
            continue
        pieces = re.split(r'\[([^\]]*)\]', part)  # text, range, text, range, ..., text
        choices = [[p] if k % 2 == 0 else _expand_range(p) for k, p in enumerate(pieces)]
        hosts.extend(''.join(combo) for combo in itertools.product(*choices))
    return hosts


def slurm_task(environ: Mapping[str, str]) -> Optional[SlurmTask]:
    """This process's task when ``srun`` started several (``SLURM_PROCID`` set, ``SLURM_NTASKS`` > 1), else None.

    Raises :class:`UserError` when the rendezvous address cannot be known, or a variable is malformed.
    """
    if 'SLURM_PROCID' not in environ:
        return None
    try:
        rank, world = int(environ['SLURM_PROCID']), int(environ.get('SLURM_NTASKS', '1'))
        local_rank = int(environ.get('SLURM_LOCALID', '0'))
        port = int(environ.get('MASTER_PORT', DEFAULT_PORT))
    except ValueError as e:
        raise UserError(f'a SLURM or MASTER_PORT environment variable is not a number: {e}') from None
    if world <= 1:
        return None
    addr = environ.get('MASTER_ADDR')
    if not addr:
        nodelist = environ.get('SLURM_JOB_NODELIST') or environ.get('SLURM_NODELIST')
        if not nodelist:
            raise UserError(f'started by SLURM as task {rank} of {world}, but the address of rank 0 is unknown: '
                            f'neither MASTER_ADDR nor SLURM_JOB_NODELIST is set.\nSet MASTER_ADDR to the host of '
                            f'task 0 (e.g. export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | '
                            f'head -n 1)), or launch with torchrun.')
        try:
            addr = expand_nodelist(nodelist)[0]
        except (ValueError, IndexError):
            raise UserError(f'cannot read the host list SLURM_JOB_NODELIST={nodelist!r}; set MASTER_ADDR to the '
                            f'host of task 0.') from None
    return SlurmTask(rank, world, local_rank, addr, port)
