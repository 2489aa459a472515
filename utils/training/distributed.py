"""Process group set-up for both launchers.

``torchrun`` and ``python -m torch.distributed.launch`` both export ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the
rendezvous address; ``torch.distributed.launch`` also passes ``--local-rank=N``, which the config accepts (as
``--local_rank``) and which the environment variable overrides. Without them, tasks started by SLURM's ``srun`` find
their place in SLURM's variables (``utils.training.slurm``). NCCL on CUDA, gloo on CPU.
"""
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from timm.utils import distribute_bn

from utils.config import Config
from utils.errors import FailedOnAnotherRank, UserError, exit_code
from utils.training.slurm import slurm_task


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device('cpu')

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def select_device(cfg: Config, local_rank: int = 0) -> torch.device:
    """This process's device; also applies the config's CPU thread count."""
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    if cfg.device == 'cuda' and not torch.cuda.is_available():
        raise UserError('--device cuda was requested but CUDA is not available here; use --device cpu (or auto).')
    if cfg.device == 'cpu' or not torch.cuda.is_available():
        return torch.device('cpu')
    torch.backends.cudnn.benchmark = True  # fixed input sizes
    return torch.device('cuda', local_rank)


def init_distributed(cfg: Config) -> DistInfo:
    """Join the process group when launched with several processes; pick this process's device.

    torchrun's (and torch.distributed.launch's) variables win when present; otherwise several tasks started by
    SLURM's ``srun`` are recognised (``utils.training.slurm``). Under SLURM the GPU is ``SLURM_LOCALID`` modulo the GPUs
    this task sees, so both ``--gpus-per-node`` (every task sees all) and ``--gpus-per-task=1`` (each sees its own)
    work.
    """
    task = None if 'WORLD_SIZE' in os.environ else slurm_task(os.environ)
    if task is not None:
        world, local_rank = task.world, task.local_rank
        device = select_device(cfg, local_rank % max(torch.cuda.device_count(), 1))
    else:
        world = int(os.environ.get('WORLD_SIZE', '1'))
        local_rank = int(os.environ.get('LOCAL_RANK', cfg.local_rank))
        device = select_device(cfg, local_rank if world > 1 else 0)
    if world == 1:
        return DistInfo(device=device)
    if device.type == 'cuda':
        torch.cuda.set_device(device)
    where = dict(init_method='env://') if task is None else \
        dict(init_method=task.init_method, rank=task.rank, world_size=task.world)
    dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo', **where,
                            device_id=device if device.type == 'cuda' else None)
    return DistInfo(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank, device=device)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class fail_together:  # noqa: N801 (used as a context manager, like contextlib's)
    """``with fail_together(info):`` a step that stops every process of the run when it fails in any of them.

    Every process enters the block (the work inside may be rank 0's alone: ``if info.is_main:``). At its end the
    processes tell each other whether they failed (one ``all_gather_object`` of exit codes); when one did, every
    process stops: the lowest failing rank raises its own exception, whose message is the run's one message, and
    every other process raises :class:`~utils.errors.FailedOnAnotherRank`, which ``run_cli`` turns into the same
    exit code without printing anything. Also a barrier: no process leaves the block before all have finished it.

    Why: a process that stops alone leaves the others in the next collective operation (DDP's constructor, a
    gradient all-reduce), where they die with a traceback (gloo: "Connection closed by peer") or wait for NCCL's
    timeout. A KeyboardInterrupt is not exchanged: Ctrl-C reaches every process of the run by itself. With one
    process the block is a plain block.
    """

    def __init__(self, info: DistInfo):
        self.info = info

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if not self.info.distributed or (exc_type is not None and not issubclass(exc_type, Exception)):
            return False
        codes = [None] * self.info.world
        dist.all_gather_object(codes, None if exc is None else exit_code(exc))
        failed = [rank for rank, code in enumerate(codes) if code is not None]
        if not failed or failed[0] == self.info.rank:
            return False  # nobody failed, or this process reports its own failure
        raise FailedOnAnotherRank(failed[0], codes[failed[0]]) from None


FAILURE_KEY = 'spikingformer/failed_rank'  # in the process group's store: '<rank>:<exit code>' of the first failure
PEER_FAILURE_WAIT_S = 10.0  # how long a process whose collective broke waits for the failing process's record


def _store():
    try:  # the default group's key-value store (torchrun's or env:// rendezvous); private in PyTorch, hence guarded
        return dist.distributed_c10d._get_default_store()
    except Exception:
        return None


def share_failure(info: DistInfo, error: BaseException) -> None:
    """Called with the exception that ends a distributed run in this process, outside :class:`fail_together`
    blocks (a damaged sample read by one rank in the middle of an epoch, say). Why: the other processes are then
    waiting in a collective operation (a gradient all-reduce), which breaks when this process exits, and each
    would print its own traceback ("Connection closed by peer") under the one message that says what happened.

    The first process to fail with its own error records ``rank:exit code`` in the process group's store (a
    compare-and-set: the first one wins) and re-raises, so its message is printed. A process whose error is
    anything else (the broken collective) waits up to :data:`PEER_FAILURE_WAIT_S` for such a record and then
    raises :class:`~utils.errors.FailedOnAnotherRank`: it exits with the same code and prints nothing. When the
    store itself is gone (it lives in rank 0, which has exited), rank 0 is the one that failed. An error no other
    process recorded is re-raised as it is (a genuine failure of this process, traceback included).
    """
    if not info.distributed or not isinstance(error, Exception) or isinstance(error, FailedOnAnotherRank):
        return
    store = _store()
    if store is None:
        return
    import datetime  # here: only a failing distributed run needs it
    if isinstance(error, UserError) or exit_code(error) == 2:  # this process's own failure: record it, first wins
        try:
            store.compare_set(FAILURE_KEY, '', f'{info.rank}:{exit_code(error)}')
        except Exception:  # the store is gone (rank 0 has exited): nothing to tell
            pass
        return
    if not isinstance(error, RuntimeError):  # a collective breaks with a RuntimeError (DistBackendError, gloo's)
        return
    try:
        store.wait([FAILURE_KEY], datetime.timedelta(seconds=PEER_FAILURE_WAIT_S))
        rank, code = (int(x) for x in store.get(FAILURE_KEY).decode().split(':'))
    except Exception:  # no record in time: the store is gone if rank 0 failed, else this is our own failure
        if info.rank == 0 or _store_alive(store):
            return
        rank, code = 0, 1
    if rank != info.rank:
        raise FailedOnAnotherRank(rank, code) from None


def _store_alive(store) -> bool:
    try:
        store.check([FAILURE_KEY])
        return True
    except Exception:
        return False


def sync_bn_stats(model: torch.nn.Module, mode: str, world: int) -> None:
    """Give every rank the same BatchNorm running statistics before an evaluation (timm's ``distribute_bn``).

    ``mode`` is the config's ``dist_bn``: 'broadcast' copies rank 0's statistics to every rank, which is what the
    published runs evaluated with (their ``--dist-bn`` was '', but the first evaluation forward through DDP, which
    broadcasts buffers from rank 0, did the same); 'reduce' averages them over the ranks. Rank 0 saves what every
    rank evaluated, so a checkpoint evaluated alone reproduces the distributed evaluation exactly.
    """
    if mode not in ('broadcast', 'reduce'):
        raise ValueError(f"dist_bn must be 'broadcast' or 'reduce', not {mode!r}")
    distribute_bn(model, world, reduce=mode == 'reduce')
