"""Run checkpoints in timm's format, written so that a kill at any instant leaves a consistent run, and exact resume.

A checkpoint is timm's dict (``epoch``, ``arch``, ``state_dict``, ``optimizer``, ``version``, ``args``, ``metric``,
``state_dict_ema`` with EMA, ``amp_scaler`` with an fp16 gradient scaler) plus ``best_metric``/``best_epoch`` and
``world_size`` (the number of processes), so timm's tools and ``models.load_checkpoint`` read it. timm's
``CheckpointSaver`` is not used: it writes the file in place (a crash mid-write leaves a broken ``last.pth.tar``) and
keeps a ranked history this project does not need.

Save order, for a kill -9 at any instant: ``last.pth.tar`` is written to a temporary file (``utils.run.atomic``),
flushed and renamed over the old one; then, when the epoch is the best so far, ``model_best.pth.tar`` becomes a hard
link of it (a copy where the file system has no hard links), again through a temporary name and a rename. Each rename is
atomic, so each file always holds a whole checkpoint. The one state a kill can leave is ``last.pth.tar`` recording
itself as the best epoch while ``model_best.pth.tar`` holds an older one; the next start repairs it, and removes the
temporary files (``utils.run.run_folder``). Files are never rewritten in place, so a link shared by both names is safe.

Exact resume needs nothing more: the learning rate follows from the epoch, and every epoch reseeds all random
generators from (seed, rank, epoch) (see ``utils.training.main``), so no generator state is stored. A mid-epoch
checkpoint adds an ``in_epoch`` entry (``utils.training.preemption``).
"""
import os
import shutil
from typing import Optional

import torch
from torch import nn

from models import CheckpointError, checkpoint_filter_fn

from utils.errors import writing
from utils.run.atomic import replace_atomically

LAST, BEST = 'last.pth.tar', 'model_best.pth.tar'


def atomic_save(obj, path: str) -> None:
    replace_atomically(path, lambda tmp: torch.save(obj, tmp))


def link_or_copy(src: str, dst: str) -> None:
    """Atomically make ``dst`` the same file as ``src``: a hard link, or a copy where links fail."""
    def write(tmp):
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
    replace_atomically(dst, write)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, 'module') else model


def make_checkpoint(model, optimizer, epoch: int, cfg, metric: float, best_metric: float, best_epoch: int,
                    scaler=None, ema=None, world: int = 1, provenance: Optional[dict] = None) -> dict:
    """The checkpoint of ``epoch``; ``world_size`` (the number of processes, ``world``) lets a resume keep the global
    batch (``utils.run.run_folder.check_same_recipe``); ``provenance`` (``utils.run.provenance.run_provenance`` of the
    start that wrote it: command, git commit, versions, host) lets ``test.py`` trace a checkpoint to its run."""
    state = dict(epoch=epoch, arch=cfg.model, state_dict=unwrap(model).state_dict(),
                 optimizer=optimizer.state_dict(), version=2, args=cfg.to_dict(), metric=metric,
                 best_metric=best_metric, best_epoch=best_epoch, world_size=world)
    if ema is not None:
        state['state_dict_ema'] = unwrap(ema).state_dict()
    if scaler is not None:
        state['amp_scaler'] = scaler.state_dict()
    if provenance is not None:
        state['provenance'] = provenance
    return state


def save_run_checkpoint(output: str, state: dict, is_best: bool) -> None:
    """``last.pth.tar`` every epoch; ``model_best.pth.tar`` a link of it when the metric improved (see above).

    A failed write (disk full) raises a one-screen ``WriteError`` and leaves the previous files whole."""
    last, best, epoch = os.path.join(output, LAST), os.path.join(output, BEST), state['epoch']
    if os.path.isfile(last):
        then = f'{LAST} is left as it was (the previous epoch). Free some space, then continue with --resume {last}'
    else:
        then = 'No checkpoint of this run exists yet: free some space, then start the run again in a new folder.'
    with writing(last, f'The checkpoint of epoch {epoch} was not saved. {then}'):
        atomic_save(state, last)
    if is_best:
        with writing(best, f'{LAST} holds epoch {epoch}, the new best, and {BEST} the previous best. Free some '
                           f'space, then continue with --resume {last}: the start makes {BEST} from {LAST}.'):
            link_or_copy(last, best)


def resume_checkpoint(checkpoint: dict, path: str, model: nn.Module, optimizer, scaler=None, ema=None) -> tuple:
    """Load a run checkpoint (as ``read_checkpoint`` returned it, checked by ``utils.run.run_folder.open_resume``) into
    the model, optimizer, scaler and EMA; returns ``(start_epoch, best_metric, best_epoch)``."""
    try:
        unwrap(model).load_state_dict(checkpoint_filter_fn(checkpoint, unwrap(model)), strict=True)
        optimizer.load_state_dict(checkpoint['optimizer'])
    except (CheckpointError, ValueError) as e:
        raise CheckpointError(f'{path}: {e}\nResume with the config the run was trained with (leave out --config: '
                              f'the run\'s own config then comes from the checkpoint).') from None
    if ema is not None:
        source = checkpoint if 'state_dict_ema' in checkpoint else {'state_dict': checkpoint['state_dict']}
        unwrap(ema).load_state_dict(checkpoint_filter_fn(source, unwrap(ema), use_ema='state_dict_ema' in source))
    if scaler is not None and 'amp_scaler' in checkpoint:
        scaler.load_state_dict(checkpoint['amp_scaler'])
    best_metric: Optional[float] = checkpoint.get('best_metric', checkpoint.get('metric'))
    return checkpoint['epoch'] + 1, best_metric, checkpoint.get('best_epoch', checkpoint['epoch'])
