"""Run checkpoints in timm's format, written atomically, and exact resume.

A checkpoint is timm's dict (``epoch``, ``arch``, ``state_dict``, ``optimizer``, ``version``, ``args``, ``metric``,
``state_dict_ema`` with EMA, ``amp_scaler`` with an fp16 gradient scaler) plus ``best_metric``/``best_epoch``, so
timm's tools and ``models.load_checkpoint`` read it. timm's ``CheckpointSaver`` is not used: it writes the file in
place (a crash mid-write leaves a broken ``last.pth.tar``) and keeps a ranked history this project does not need.

Exact resume needs nothing more: the learning rate follows from the epoch, and every epoch reseeds all random
generators from (seed, rank, epoch) (see ``utils.main``), so no generator state is stored.
"""
import os
import shutil
from typing import Optional

import torch
from torch import nn

from models import CheckpointError, checkpoint_filter_fn, read_checkpoint

LAST, BEST = 'last.pth.tar', 'model_best.pth.tar'


def _replace_atomically(write, path: str) -> None:
    """Write to a temporary file beside ``path``, flush it to disk, then rename it over ``path``."""
    tmp = f'{path}.tmp{os.getpid()}'
    try:
        write(tmp)
        with open(tmp, 'rb') as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_save(obj, path: str) -> None:
    _replace_atomically(lambda tmp: torch.save(obj, tmp), path)


def atomic_copy(src: str, dst: str) -> None:
    _replace_atomically(lambda tmp: shutil.copyfile(src, tmp), dst)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, 'module') else model


def make_checkpoint(model, optimizer, epoch: int, cfg, metric: float, best_metric: float, best_epoch: int,
                    scaler=None, ema=None) -> dict:
    state = dict(epoch=epoch, arch=cfg.model, state_dict=unwrap(model).state_dict(),
                 optimizer=optimizer.state_dict(), version=2, args=cfg.to_dict(), metric=metric,
                 best_metric=best_metric, best_epoch=best_epoch)
    if ema is not None:
        state['state_dict_ema'] = unwrap(ema).state_dict()
    if scaler is not None:
        state['amp_scaler'] = scaler.state_dict()
    return state


def save_run_checkpoint(output: str, state: dict, is_best: bool) -> None:
    """``last.pth.tar`` every epoch; ``model_best.pth.tar`` a copy of it when the metric improved."""
    last = os.path.join(output, LAST)
    atomic_save(state, last)
    if is_best:
        atomic_copy(last, os.path.join(output, BEST))


def resume_checkpoint(path: str, model: nn.Module, optimizer, scaler=None, ema=None) -> tuple:
    """Load a run checkpoint written by ``save_run_checkpoint``; returns ``(start_epoch, best_metric, best_epoch)``."""
    checkpoint = read_checkpoint(path)
    if not isinstance(checkpoint, dict) or 'optimizer' not in checkpoint or 'epoch' not in checkpoint:
        raise CheckpointError(f'{path} holds weights only (no optimizer state or epoch), so training cannot '
                              f'continue from it.\n--resume takes the last.pth.tar of a run written by train.py; '
                              f'evaluate weights-only checkpoints with test.py --checkpoint.')
    try:
        unwrap(model).load_state_dict(checkpoint_filter_fn(checkpoint, unwrap(model)), strict=True)
        optimizer.load_state_dict(checkpoint['optimizer'])
    except (CheckpointError, ValueError) as e:
        raise CheckpointError(f'{path}: {e}\nResume with the config the run was trained with '
                              f'(its args.yaml: --config <run>/args.yaml).') from None
    if ema is not None:
        source = checkpoint if 'state_dict_ema' in checkpoint else {'state_dict': checkpoint['state_dict']}
        unwrap(ema).load_state_dict(checkpoint_filter_fn(source, unwrap(ema), use_ema='state_dict_ema' in source))
    if scaler is not None and 'amp_scaler' in checkpoint:
        scaler.load_state_dict(checkpoint['amp_scaler'])
    best_metric: Optional[float] = checkpoint.get('best_metric', checkpoint.get('metric'))
    return checkpoint['epoch'] + 1, best_metric, checkpoint.get('best_epoch', checkpoint['epoch'])
