"""Mid-epoch checkpoints: every ``--checkpoint-interval`` minutes, and on SIGUSR1 or SIGTERM (what SLURM sends before a
time limit with ``sbatch --signal=USR1@120``, and at the limit or on ``scancel``), the running epoch is saved to
``last.pth.tar`` at the next optimizer-step boundary; after a signal the run then prints one line with the resume
command and exits with 128 + the signal's number (138 for SIGUSR1, 143 for SIGTERM), as a shell reports a process
ended by that signal, so that a job script can tell a preempted run from a failed one (docs/preemption.md).

What a mid-epoch checkpoint holds: the usual run checkpoint (``utils.run.checkpoint.make_checkpoint``) of the last
*completed* epoch's bookkeeping (``epoch``, ``best_metric``, ``best_epoch``, so that everything that reads those
fields keeps its meaning) with the weights, optimizer, gradient scaler and EMA of this instant, plus ``in_epoch``:
the running epoch, the next batch, the optimizer steps and skipped steps so far, and each process's sums of the
training loss and of the samples seen (the epoch's ``train_loss`` is their quotient at the end). Nothing else is
needed to continue exactly: the learning rate is per epoch, a step boundary has no accumulated gradients, and every
random draw of the epoch is keyed by (seed, rank, epoch, position) rather than carried by a generator
(``utils.data.resumable_data``), so the sampler order, the loader workers' augmentation, mixup and random erasing of the
remaining batches follow from the recorded position alone.

Signals are only noted by the handler (a flag); the save happens in the training loop, between optimizer steps, where
the state is whole. Under several processes the decision is shared by an all-reduce at each step boundary, so that
every rank saves at the same step even when the signal reached only one of them (one tiny all-reduce per optimizer
step). A signal during evaluation is acted on once the epoch's own checkpoint is written. DataLoader workers
(forked) inherit the flag-setting handler, so a signal sent to the whole process group does not kill them.
"""
import os
import shlex
import signal
import sys
import time
from typing import Callable, Optional

import torch
import torch.distributed as dist

from utils.errors import UserError

SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


_PREVIOUS = {}  # signal -> the handler before StopRequests.install


def restore_signal_handlers() -> None:
    """Put back the SIGUSR1/SIGTERM handlers that :meth:`StopRequests.install` replaced (``train_main`` does, in a
    ``finally``, so that a caller such as a test process gets its own handlers back)."""
    while _PREVIOUS:
        sig, handler = _PREVIOUS.popitem()
        signal.signal(sig, handler)


class StopRequests:
    """The SIGUSR1/SIGTERM flag and the interval clock; :meth:`poll` is the decision of all processes at a step
    boundary."""

    def __init__(self, interval_minutes: Optional[float], device: torch.device, distributed: bool):
        self.interval = None if interval_minutes is None else interval_minutes * 60.0
        self.device, self.distributed = device, distributed
        self.signal: Optional[int] = None
        self.last_save = time.monotonic()

    def _note(self, signum, frame) -> None:
        if self.signal is None:
            self.signal = signum

    def install(self) -> 'StopRequests':
        """Note SIGUSR1 and SIGTERM from now on, until :func:`restore_signal_handlers`."""
        restore_signal_handlers()
        try:
            for sig in SIGNALS:
                _PREVIOUS[sig] = signal.signal(sig, self._note)
        except ValueError:  # not the main thread (an embedding application): no signal handling
            restore_signal_handlers()
        return self

    def saved(self) -> None:
        """A checkpoint was written (mid-epoch or at the epoch's end): the interval starts again."""
        self.last_save = time.monotonic()

    def poll(self) -> Optional[int]:
        """At a step boundary: 0 to save for the interval, a signal number to save and stop, None to go on; the same
        answer on every process (the largest request of any)."""
        want = float(self.signal or 0)
        if not want and self.interval is not None and time.monotonic() - self.last_save >= self.interval:
            want = -1.0
        if self.distributed:
            t = torch.tensor([want, -want], dtype=torch.float64, device=self.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)  # [largest signal, 1 if any interval is due]
            want = t[0].item() if t[0].item() > 0 else -t[1].item()
            if want > 0 and self.signal is None:
                self.signal = int(want)
        if want > 0:
            return int(want)
        return 0 if want < 0 else None


def gather_sums(sums: dict, device: torch.device, distributed: bool) -> dict:
    """``{'loss_sum': [per rank], 'count': [per rank]}`` of every process's epoch sums (float64: exact)."""
    local = torch.tensor([sums['loss_sum'], sums['count']], dtype=torch.float64, device=device)
    if not distributed:
        parts = [local]
    else:
        parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, local)
    return dict(loss_sum=[p[0].item() for p in parts], count=[int(p[1].item()) for p in parts])


def in_epoch_state(epoch: int, next_batch: int, sums: dict, device: torch.device, distributed: bool) -> dict:
    """The ``in_epoch`` entry of a mid-epoch checkpoint (see the module docstring)."""
    return dict(epoch=epoch, batch=next_batch, steps=sums['steps'], skipped=sums['skipped'],
                **gather_sums(sums, device, distributed))


def check_in_epoch(state, path: str, epoch: int, world: int, rank: int) -> dict:
    """This process's part of a checkpoint's ``in_epoch`` entry, checked: ``dict(batch, sums)`` for the engine."""
    try:
        ok = (isinstance(state, dict) and state.get('epoch') == epoch and isinstance(state.get('batch'), int)
              and state['batch'] >= 0 and len(state['loss_sum']) == len(state['count']))
    except (TypeError, KeyError):
        ok = False
    if not ok:
        raise UserError(f'{path}: its mid-epoch state (in_epoch) is damaged or belongs to another epoch than the one '
                        f'it follows ({epoch}).\nResume from a checkpoint train.py wrote.')
    if len(state['count']) != world:
        raise UserError(f'{path} was saved in the middle of epoch {epoch} by {len(state["count"])} process(es); an '
                        f'exact continuation needs the same number (each process resumes its own part of the '
                        f'epoch), not {world}.\nResume with {len(state["count"])} process(es).')
    return dict(batch=state['batch'], sums=dict(loss_sum=state['loss_sum'][rank], count=state['count'][rank],
                                                steps=state['steps'], skipped=state['skipped']))


def resume_command(last: str, world: int) -> str:
    """The command that continues this run from ``last``, as this process was started."""
    script = shlex.quote(sys.argv[0]) if sys.argv and sys.argv[0] else '<data set>/train.py'
    if os.environ.get('SLURM_JOB_ID'):  # scripts/slurm_imagenet.sbatch requeues itself after SIGUSR1
        return f'RUN={shlex.quote(os.path.dirname(last) or ".")} sbatch scripts/slurm_imagenet.sbatch (a job of ' \
               f'that script requeues itself), or srun python {script} --resume {shlex.quote(last)}'
    launcher = f'torchrun --nproc_per_node={world} ' if world > 1 else 'python '
    return f'{launcher}{script} --resume {shlex.quote(last)}'


def stop_line(signum: int, epoch: int, next_batch: Optional[int], total: Optional[int], last: str,
              world: int) -> str:
    where = f'epoch {epoch}, after batch {next_batch} of {total}' if next_batch is not None else \
        f'the end of epoch {epoch}'
    return f'{signal.Signals(signum).name} received: saved {where} to {last}; continue with: ' \
           f'{resume_command(last, world)}'


def stop(signum: int, line: str, log: Callable[[str], None]) -> None:
    """Print the one line (rank 0: ``log`` prints on rank 0 only) and exit with 128 + the signal's number."""
    log(line)
    sys.stdout.flush()
    raise SystemExit(128 + signum)
