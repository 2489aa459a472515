"""Fine-tuning: a new run that starts from a checkpoint's weights (timm's ``--initial-checkpoint``).

Only the weights are taken: not the optimizer state, the epoch or the run folder (that is ``--resume``). Any format
``models.load_checkpoint`` reads is accepted (this project's runs, the official checkpoints with their ``module.``
prefixes and published parameter names), through the same filter. The classifier head is the one exception to
strict loading: when the checkpoint has another number of classes, the head keeps this model's fresh
initialisation (as timm does for pretrained weights). The weights do not depend on the number of time steps T, so a
checkpoint trained with one T fine-tunes with another.
"""
import os
from typing import Optional

from torch import nn

from models import CheckpointError, checkpoint_filter_fn, read_checkpoint, renamed_state_dict

from utils.config import Config


def initial_checkpoint_to_load(cfg: Config) -> Optional[str]:
    """The path of ``cfg.initial_checkpoint`` to load into a new run, or None; checked before anything is built.

    A resumed run never loads it: its weights come from the resumed checkpoint, and the recipe check on resume
    (``utils.run.run_folder.check_same_recipe``) refuses an ``initial_checkpoint`` other than the one the run was
    started from, so ``--resume <run>/last.pth.tar`` continues a fine-tuning run as it was configured.
    """
    path = cfg.initial_checkpoint
    if path is None:
        return None
    if not os.path.isfile(path):
        raise CheckpointError(f'initial checkpoint not found: {path}\nCheck the path (relative paths start in the '
                              f'current directory: {os.getcwd()}).')
    return path


def load_initial_checkpoint(model: nn.Module, path: str, use_ema: bool = False, trust: bool = False) -> str:
    """Load the weights of checkpoint ``path`` into ``model``; returns the line to log.

    Every tensor must fit strictly (a :class:`CheckpointError` names the keys or shapes that do not), except the
    classifier head when its number of classes differs: it is left as the model initialised it.
    """
    checkpoint = read_checkpoint(path, trust=trust)
    try:
        state = renamed_state_dict(checkpoint, use_ema)
    except CheckpointError as e:
        raise CheckpointError(f'{path}: {e}') from None
    own = model.state_dict()
    head = getattr(model, 'pretrained_cfg', {}).get('classifier', 'head')
    head_keys = [k for k in own if k.startswith(f'{head}.')]
    differs = [k for k in head_keys if k in state and getattr(state[k], 'shape', None) != own[k].shape]
    note = ''
    if differs:
        old = state.get(f'{head}.weight')
        note = (f'; classifier head re-initialised: the checkpoint has {old.shape[0] if old is not None else "?"} '
                f'classes, this model {own[differs[0]].shape[0]}')
        state.update({k: own[k] for k in head_keys})
    try:
        state = checkpoint_filter_fn(state, model)
    except CheckpointError as e:
        raise CheckpointError(f'--initial-checkpoint {path}: {e}\nFine-tuning needs the architecture the checkpoint '
                              f'was trained with (--model, --embed-dims, --depths); only the number of classes and '
                              f'the time steps may differ.') from None
    model.load_state_dict(state, strict=True)
    loaded = len(state) - (len(head_keys) if differs else 0)
    return f'initial weights from {path}: {loaded} of {len(state)} tensors{note}'
