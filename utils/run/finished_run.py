"""Finished runs stay finished: what ``--resume`` does with a run that has trained its whole schedule, or more epochs
than the schedule it is resumed with.

A run's trained epochs are its checkpoint's ``epoch + 1``; its schedule is ``epochs + cooldown_epochs`` as timm's
scheduler counts it (``utils.training.main.build_schedule``). A resume whose schedule has no epoch left is not an error:
the run is complete, the command says so and ends with exit 0 before it claims or writes anything (a job script that
resumes until done may run it once too often). A schedule shorter than what was trained is an error: those epochs
cannot be undone, and continuing would record a recipe (``args.yaml``, ``epochs: N``) beside a ``summary.csv`` and
checkpoints of more epochs than it says.

One exception to "nothing touched": a complete run whose last save was cut by a kill (:func:`needs_repair`:
temporary files left, or ``model_best.pth.tar`` not the best epoch) goes through the normal start, which repairs
the folder and trains no epoch.
"""
from typing import Optional

from utils.config import Config
from utils.errors import UserError
from utils.run.run_folder import best_file_epoch, leftover_temporaries


def trained_epochs(progress: dict) -> Optional[int]:
    """Epochs a checkpoint has trained (``epoch`` + 1), or None when it does not say."""
    epoch = progress.get('epoch')
    return epoch + 1 if isinstance(epoch, int) and not isinstance(epoch, bool) else None


def finished_message(cfg: Config, progress: dict, num_epochs: int) -> Optional[str]:
    """The line that says a resumed run is complete (None when it has epochs left); :class:`UserError` when the
    schedule of ``cfg`` (``num_epochs`` with its cooldown) ends before the epochs the run has trained."""
    trained = trained_epochs(progress)
    if trained is None or trained < num_epochs:
        return None
    origin = '--epochs' if 'epochs' in cfg.command_line else 'epochs'
    cooldown = num_epochs - cfg.epochs
    schedule = f'{num_epochs} epochs ({cfg.epochs} + {cooldown} cooldown)' if cooldown else f'{num_epochs} epochs'
    if trained > num_epochs:
        raise UserError(f'cannot resume {cfg.resume} with {origin} {cfg.epochs}: the run has already trained '
                        f'{trained} epochs, more than that schedule of {schedule}. Nothing was changed.\nTrained '
                        f'epochs cannot be undone: continue it with --epochs {trained - cooldown} or more, evaluate '
                        f'its checkpoints with test.py, or start a new run with fewer epochs in another folder.')
    best = progress.get('best_metric')
    best = (f'; best top-1 {best:.2f}% at epoch {progress.get("best_epoch")}'
            if isinstance(best, (int, float)) else '')
    return (f'run {cfg.output} is finished: it has trained all {schedule}{best}. Nothing to do, nothing was '
            f'changed.\nTo train it longer: --resume {cfg.resume} --epochs M with M > {cfg.epochs}.')


def needs_repair(folder: str, progress: dict) -> bool:
    """Whether a kill during the run's last save left work for a start (``utils.run.run_folder.start_folder``)."""
    best_epoch = progress.get('best_epoch')
    return bool(leftover_temporaries(folder)) or (best_epoch is not None and best_file_epoch(folder) != best_epoch)
