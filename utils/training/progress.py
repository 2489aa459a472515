"""Timing of a training run: time per batch, images/s, and the ETA of the epoch and of the whole run.

Figures are averages over the epoch so far (elapsed time / batches done), never one batch's time: on a shared machine
a single batch can take 20x the usual, and a one-batch rate would swing with it. The run's ETA adds the time the
finished epochs spent outside the training loop (evaluation, checkpoints), so an ImageNet run's evaluation passes
are counted; before the first epoch ends that overhead is unknown and counted as zero.

The arithmetic lives here, with an injectable clock, so that it is tested without waiting; the engine only calls
:meth:`EpochMeter.update` and formats :meth:`EpochMeter.figures`.
"""
import time
from typing import Callable, Optional

MIN_LOG_SECONDS = 60.0  # without a terminal, a progress line at least this often


def format_duration(seconds: Optional[float]) -> str:
    """``'0:04:05'``, ``'27:46:40'`` -> ``'1d 03:46:40'``; None (unknown yet) -> ``'?'``."""
    if seconds is None:
        return '?'
    seconds = int(round(max(seconds, 0.0)))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f'{days}d {hours:02d}:{minutes:02d}:{secs:02d}' if days else f'{hours}:{minutes:02d}:{secs:02d}'


class RunClock:
    """Wall time of the run (this process's part of it: a resumed run starts counting again).

    ``_train`` calls :meth:`start_epoch` and :meth:`end_epoch` around each epoch; the epochs' time outside the
    training loop (evaluation, checkpoint writing) is averaged into :attr:`overhead`.
    """

    def __init__(self, num_epochs: int, clock: Callable[[], float] = time.monotonic):
        self.num_epochs, self.clock = num_epochs, clock
        self.start = clock()
        self.epoch_start: Optional[float] = None
        self.durations, self.overheads = [], []

    def start_epoch(self) -> None:
        self.epoch_start = self.clock()

    def end_epoch(self, train_seconds: float) -> None:
        """The epoch that :meth:`start_epoch` began is over; ``train_seconds`` of it were the training loop."""
        duration = self.clock() - self.epoch_start
        self.durations.append(duration)
        self.overheads.append(max(duration - train_seconds, 0.0))

    @property
    def overhead(self) -> float:
        return sum(self.overheads) / len(self.overheads) if self.overheads else 0.0

    def elapsed(self) -> float:
        return self.clock() - self.start

    def eta(self, epoch: int, epoch_remaining: Optional[float],
            epoch_train_seconds: Optional[float]) -> Optional[float]:
        """Seconds until the run ends, during epoch ``epoch``: the rest of its training loop, its evaluation, and
        every later epoch at ``epoch_train_seconds`` (the current estimate of a whole training loop) plus overhead."""
        if epoch_remaining is None or epoch_train_seconds is None:
            return None
        later = self.num_epochs - epoch - 1
        return epoch_remaining + self.overhead + later * (epoch_train_seconds + self.overhead)

    def remaining_after(self, epoch: int) -> Optional[float]:
        """Seconds until the run ends, once epoch ``epoch`` has ended: later epochs at the mean measured duration."""
        if not self.durations:
            return None
        return (self.num_epochs - epoch - 1) * sum(self.durations) / len(self.durations)


class EpochMeter:
    """Progress of one epoch's training loop over ``total`` batches.

    ``world`` scales this process's images to all processes' (every rank has the same per-process batch).
    """

    def __init__(self, total: int, epoch: int, world: int = 1, run_clock: Optional[RunClock] = None,
                 log_interval: int = 50, min_log_seconds: float = MIN_LOG_SECONDS,
                 clock: Callable[[], float] = time.monotonic):
        self.total, self.epoch, self.world, self.run_clock = total, epoch, world, run_clock
        self.log_interval, self.min_log_seconds, self.clock = log_interval, min_log_seconds, clock
        self.start = self.last_log = clock()
        self.batches = self.images = 0

    def update(self, batch_size: int) -> None:
        """One batch of ``batch_size`` images (this process's) is done."""
        self.batches += 1
        self.images += batch_size * self.world

    @property
    def elapsed(self) -> float:
        return self.clock() - self.start

    def figures(self) -> dict:
        """``s_per_batch``, ``img_s`` (all processes), ``epoch_eta`` and ``run_eta`` in seconds (None before the
        first batch; ``run_eta`` None without a run clock), and ``elapsed``."""
        elapsed = self.elapsed
        if self.batches == 0 or elapsed <= 0:
            return dict(s_per_batch=None, img_s=None, epoch_eta=None, run_eta=None, elapsed=elapsed)
        s_per_batch = elapsed / self.batches
        epoch_eta = (self.total - self.batches) * s_per_batch
        run_eta = self.run_clock.eta(self.epoch, epoch_eta, self.total * s_per_batch) if self.run_clock else None
        return dict(s_per_batch=s_per_batch, img_s=self.images / elapsed, epoch_eta=epoch_eta, run_eta=run_eta,
                    elapsed=elapsed)

    def log_due(self) -> bool:
        """After :meth:`update`: is a progress line due (every ``log_interval`` batches, or ``min_log_seconds``
        since the last line)? Never after the last batch, which the epoch's own line follows."""
        if self.batches >= self.total:
            return False
        now = self.clock()
        due = (self.log_interval > 0 and self.batches % self.log_interval == 0) or \
            now - self.last_log >= self.min_log_seconds
        if due:
            self.last_log = now
        return due

    def line(self, loss: float, lr: float) -> str:
        f = self.figures()
        return (f'epoch {self.epoch} [{self.batches}/{self.total}] loss {loss:.4f} lr {lr:.3g} | '
                f'{f["s_per_batch"]:.3f} s/batch, {f["img_s"]:.1f} img/s | ETA epoch {format_duration(f["epoch_eta"])}'
                f', run {format_duration(f["run_eta"])}')

    def postfix(self, loss: float, lr: float) -> dict:
        """The same figures for a tqdm bar (which shows time per batch and the epoch's ETA itself)."""
        f = self.figures()
        return dict(loss=f'{loss:.4f}', lr=f'{lr:.3g}', img_s=f'{f["img_s"] or 0:.1f}',
                    run_eta=format_duration(f['run_eta']))
