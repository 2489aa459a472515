"""Reading checkpoints, and mapping published parameter names onto this model (timm's ``checkpoint_filter_fn``).

Published checkpoints differ from this model's state dict in three ways, all handled here:

* the tokenizer names: ``patch_embed.proj_conv``/``proj{i}_conv`` (ImageNet and DVS layout) and
  ``patch_embed.block0_conv``/``block{i}_conv`` (CIFAR layout) become ``patch_embed.stem_conv`` and
  ``patch_embed.stages.{i-1}.conv`` (the same for ``_bn``), so one tokenizer class serves both layouts;
* the unused ``block.{i}.norm1``/``norm2`` LayerNorm tensors, which play no part in the output, are dropped;
* DistributedDataParallel's ``module.`` prefix is stripped.
"""
import argparse
import os
import pickle
import re
import zipfile
from typing import Any, Mapping

import torch
from torch import nn

_RENAMES = (
    (re.compile(r'^patch_embed\.(?:proj|block0)_(conv|bn)\.'), r'patch_embed.stem_\1.'),
    (re.compile(r'^patch_embed\.(?:proj|block)([1-4])_(conv|bn)\.'),
     lambda m: f'patch_embed.stages.{int(m.group(1)) - 1}.{m.group(2)}.'),
)
_DROPPED = re.compile(r'^block\.\d+\.norm[12]\.')
_STATE_KEYS = ('state_dict', 'model', 'module')


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or that does not fit the model."""


def read_checkpoint(path: str) -> Any:
    """``torch.load`` on CPU with a clear :class:`CheckpointError` for a missing or unreadable file.

    Tries ``weights_only=True`` first (argparse namespaces, which timm stores as ``args``, allowed); a checkpoint
    holding other pickled objects is then loaded in full, since the user named this file explicitly.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f'checkpoint not found: {path}\nCheck the path (relative paths are taken from the '
                              f'current directory: {os.getcwd()}).')
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError:
        pass
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f'cannot read checkpoint {path}: {e}\nThe file looks truncated or corrupt: '
                              f're-download it, or use another checkpoint of the run.') from None
    try:
        return torch.load(path, map_location='cpu', weights_only=False)
    except Exception as e:  # anything unpickling may raise on a damaged file
        raise CheckpointError(f'cannot read checkpoint {path}: {e}\nThe file looks truncated or corrupt: '
                              f're-download it, or use another checkpoint of the run.') from None


def _select_state_dict(checkpoint: Mapping, use_ema: bool) -> Mapping:
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f'expected a state dict or a checkpoint dict, got {type(checkpoint).__name__}')
    if use_ema:
        if 'state_dict_ema' not in checkpoint:
            raise CheckpointError('use_ema was requested but the checkpoint has no state_dict_ema (EMA was off '
                                  'when it was saved); load it without --use-ema.')
        return checkpoint['state_dict_ema']
    for key in _STATE_KEYS:
        if key in checkpoint and isinstance(checkpoint[key], Mapping):
            return checkpoint[key]
    if 'state_dict_ema' in checkpoint:
        return checkpoint['state_dict_ema']
    return checkpoint


def _rename(key: str) -> str:
    while key.startswith('module.'):
        key = key[len('module.'):]
    for pattern, replacement in _RENAMES:
        key = pattern.sub(replacement, key)
    return key


def renamed_state_dict(checkpoint: Mapping, use_ema: bool = False) -> dict:
    """The weights of ``checkpoint`` (see :func:`checkpoint_filter_fn`) under this model's names, unused tensors
    dropped, not yet checked against a model."""
    state = {}
    for key, value in _select_state_dict(checkpoint, use_ema).items():
        key = _rename(key)
        if not _DROPPED.match(key):
            state[key] = value
    return state


def checkpoint_filter_fn(checkpoint: Mapping, model: nn.Module, use_ema: bool = False) -> dict:
    """A state dict that ``model.load_state_dict(..., strict=True)`` accepts.

    ``checkpoint`` is a raw state dict or a checkpoint dict (weights under ``state_dict``, ``model`` or, with
    ``use_ema`` or when alone, ``state_dict_ema``). Raises :class:`CheckpointError` naming the keys or shapes that
    disagree when the checkpoint belongs to another architecture.
    """
    state = renamed_state_dict(checkpoint, use_ema)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f'{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}'
              for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        lines = ['the checkpoint does not fit this model (another variant, embed_dims, depths, num_classes or '
                 'in_channels?):']
        for title, items in (('missing', missing), ('unexpected', unexpected), ('shape mismatch', shapes)):
            if items:
                more = f' ... and {len(items) - 5} more' if len(items) > 5 else ''
                lines.append(f'  {title} ({len(items)}): {", ".join(items[:5])}{more}')
        raise CheckpointError('\n'.join(lines))
    return state


def load_checkpoint(model: nn.Module, path: str, use_ema: bool = False) -> Any:
    """Load the weights of checkpoint file ``path`` into ``model`` strictly; returns the whole checkpoint."""
    checkpoint = read_checkpoint(path)
    try:
        state = checkpoint_filter_fn(checkpoint, model, use_ema=use_ema)
    except CheckpointError as e:
        raise CheckpointError(f'{path}: {e}') from None
    model.load_state_dict(state, strict=True)
    return checkpoint
