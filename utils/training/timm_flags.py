"""What timm's ``train.py`` flags do here (issue 24): the run folder's name (``--experiment``), short runs that fit
their schedule (``--epochs`` shorter than the warmup, ``--smoke``), SyncBatchNorm, channels-last, ``torch.compile``
and Weights & Biases logging. Each is an opt-in: with its default, nothing here changes a number of a run.

The mapping of every timm flag onto this project's keys is in docs/timm.md.
"""
import os
import time
from typing import Callable, Optional

import torch
from torch import nn

from utils.config import Config, ConfigError
from utils.errors import UserError

SMOKE_BATCHES = 2  # training and evaluation batches of a --smoke run (unless the limits are given)


def run_folder_name(cfg: Config) -> str:
    """The name of a new run's folder under ``output/<kind>/``: ``--experiment`` when given, else
    ``<time>-<dataset>-<model>`` (the data set's name: ``dataset_name`` for a folder data set)."""
    if cfg.experiment:
        return cfg.experiment
    dataset = getattr(cfg, 'dataset_name', None) or cfg.dataset
    return f'{time.strftime("%Y%m%d-%H%M%S")}-{dataset}-{cfg.model}'


def check_experiment(cfg: Config) -> None:
    """``--experiment`` names the run folder under ``output/train/``; ``--output`` names the folder itself: one of
    the two. The name is one folder name (no separator, not '.' or '..'), so that the run stays under output/."""
    name = cfg.experiment
    if name is None:
        return
    if cfg.output is not None and 'output' in cfg.command_line and not cfg.resume:
        raise ConfigError(f'--experiment {name} and --output {cfg.output} both name the run folder: --output is the '
                          f'folder itself, --experiment its name under output/train/.\nFix: give one of the two.')
    if not name or name in ('.', '..') or os.sep in name or (os.altsep and os.altsep in name):
        raise ConfigError(f'--experiment {name!r} is not a folder name: it names the run folder under output/train/, '
                          f'so it cannot contain {os.sep!r} or be "." or "..".\nFix: --experiment my-run (or '
                          f'--output path/to/folder for a folder elsewhere).')


def fit_schedule(cfg: Config) -> Optional[str]:
    """Make a short run fit its schedule; returns the one line that says what changed (None when nothing did).

    ``--smoke`` sets ``epochs`` to 1 and both batch limits to :data:`SMOKE_BATCHES`, each unless the command line
    gives it. An ``epochs`` shorter than ``warmup_epochs`` with a cooldown (refused before: the warmup would run on
    into the cooldown) clips the warmup to ``epochs`` and the cooldown to 0, so that e.g. ``--epochs 1`` on a
    published config trains exactly one epoch. Without a cooldown a run may still end inside its warmup, as before
    (the warmup is then left as it is, so the run's first epochs have the full run's learning rates). The clipped
    values are what the run records (``args.yaml``), so a resume compares equal."""
    changes = []
    if cfg.smoke:
        for name, value in (('epochs', 1), ('limit_train_batches', SMOKE_BATCHES),
                            ('limit_eval_batches', SMOKE_BATCHES)):
            if name not in cfg.command_line and getattr(cfg, name) != value:
                changes.append(f'{name} {getattr(cfg, name)} -> {value}')
                setattr(cfg, name, value)
    if cfg.cooldown_epochs > 0 and cfg.warmup_epochs > cfg.epochs:
        changes.append(f'warmup_epochs {cfg.warmup_epochs} -> {cfg.epochs}, cooldown_epochs {cfg.cooldown_epochs} '
                       f'-> 0')
        cfg.warmup_epochs, cfg.cooldown_epochs = cfg.epochs, 0
    if not changes:
        return None
    why = '--smoke' if cfg.smoke else f'epochs {cfg.epochs} is shorter than the warmup'
    return f'short run ({why}): clipped {"; ".join(changes)} (the run trains {cfg.epochs} epoch(s))'


def prepare_model(model: nn.Module, cfg: Config, distributed: bool) -> tuple:
    """``(model, notes)``: the model with SyncBatchNorm (``sync_bn``, several processes only: torch's converter,
    which keeps the weights and statistics) and in channels-last memory format (``channels_last``). Call before the
    optimizer is built (the converter makes new modules) and before DDP wraps the model."""
    notes = []
    if cfg.sync_bn:
        if distributed:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            notes.append('BatchNorm layers synchronised over the processes (--sync-bn)')
        else:
            notes.append('note: --sync-bn has no effect with one process')
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, notes


def compile_model(model: nn.Module, cfg: Config) -> nn.Module:
    """``torch.compile(model, backend=cfg.torchcompile)``, or ``model`` when it is off. The compiled module shares
    the parameters of ``model``, which stays the one that is saved, so checkpoints keep their names."""
    if not cfg.torchcompile:
        return model
    import torch._dynamo  # noqa: F401
    backends = torch._dynamo.list_backends(exclude_tags=())
    if cfg.torchcompile not in backends:
        raise ConfigError(f'--torchcompile {cfg.torchcompile}: not a torch.compile backend here (this PyTorch has '
                          f'{", ".join(backends)}).\nFix: --torchcompile inductor (the default), or leave it out.')
    return torch.compile(model, backend=cfg.torchcompile)


def check_wandb(cfg: Config) -> None:
    """``--log-wandb`` needs the wandb package: a one-line error before the run starts when it is missing."""
    if not cfg.log_wandb:
        return
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise UserError('--log-wandb needs the wandb package, which is not installed: pip install wandb (or leave '
                        'out --log-wandb; the run folder\'s summary.csv and log.txt record the same metrics).'
                        ) from None


def wandb_logger(cfg: Config, enabled: bool) -> Optional[Callable[[dict, int], None]]:
    """A function ``(values, epoch)`` that logs one epoch's row to Weights & Biases (rank 0, ``--log-wandb``), or
    None. The run is named after its folder, with the resolved config as its config."""
    if not (cfg.log_wandb and enabled):
        return None
    import wandb
    run = wandb.init(project=cfg.experiment or 'spikingformer', name=os.path.basename(os.path.normpath(cfg.output)),
                     config=cfg.to_dict())

    def log(values: dict, epoch: int) -> None:
        run.log(dict(values, epoch=epoch), step=epoch)
    return log
