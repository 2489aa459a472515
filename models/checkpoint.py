"""Reading checkpoints, and mapping published parameter names onto this model (timm's ``checkpoint_filter_fn``).

Published checkpoints differ from this model's state dict in these ways, all handled here:

* the tokenizer names: ``patch_embed.proj_conv``/``proj{i}_conv`` (ImageNet and DVS layout) and
  ``patch_embed.block0_conv``/``block{i}_conv`` (CIFAR layout) become ``patch_embed.stem_conv`` and
  ``patch_embed.stages.{i-1}.conv`` (the same for ``_bn``), so one tokenizer class serves both layouts;
* the unused ``block.{i}.norm1``/``norm2`` LayerNorm tensors, which play no part in the output, are dropped;
* DistributedDataParallel's ``module.`` prefix is stripped;
* the Spikformer baseline's names (models.spikformer): its SPS tokenizer's ``proj_conv{i}``/``proj_bn{i}`` (i = 1..3)
  and ``rpe_conv``/``rpe_bn`` become ``patch_embed.stages.{i-1}`` and ``patch_embed.stages.3``, its MLP's
  ``fc1_*``/``fc2_*`` become ``mlp1_*``/``mlp2_*``, and the 1x1 ``Conv1d`` MLP weights of its DVS file
  (``[out, in, 1]``) are reshaped to this model's 1x1 ``Conv2d`` (``[out, in, 1, 1]``): the same numbers.
"""
import argparse
import numbers
import os
import pickle
import re
import sys
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

_RENAMES = (
    (re.compile(r'^patch_embed\.(?:proj|block0)_(conv|bn)\.'), r'patch_embed.stem_\1.'),
    (re.compile(r'^patch_embed\.(?:proj|block)([1-4])_(conv|bn)\.'),
     lambda m: f'patch_embed.stages.{int(m.group(1)) - 1}.{m.group(2)}.'),
    # Spikformer (ZK-Zhou/spikformer): SPS tokenizer and MLP names
    (re.compile(r'^patch_embed\.proj_(conv|bn)([1-3])\.'),
     lambda m: f'patch_embed.stages.{int(m.group(2)) - 1}.{m.group(1)}.'),
    (re.compile(r'^patch_embed\.rpe_(conv|bn)\.'), r'patch_embed.stages.3.\1.'),
    (re.compile(r'^(block\.\d+\.mlp)\.fc([12])_'), r'\1.mlp\2_'),
)
_DROPPED = re.compile(r'^block\.\d+\.norm[12]\.')
_STATE_KEYS = ('state_dict', 'model', 'module')


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or that does not fit the model."""


def _safe_globals() -> list:
    """What a checkpoint may hold besides tensors and plain values (numbers, strings, None, lists, tuples, dicts,
    sets), which ``weights_only=True`` always accepts.

    timm's ``CheckpointSaver`` (hence the published ImageNet and CIFAR checkpoints) stores the training arguments as an
    ``argparse.Namespace`` under ``args``; NumPy scalars (a ``metric`` or ``best_acc`` computed with NumPy) are
    allowed too, numeric and boolean dtypes only. Each of these only rebuilds a value: none can call a function
    named by the file.
    """
    try:
        from numpy._core.multiarray import scalar  # NumPy 2
    except ImportError:  # pragma: no cover (NumPy 1)
        from numpy.core.multiarray import scalar
    dtypes = [type(np.dtype(code)) for code in '?bhilqBHILQefdg']
    return [argparse.Namespace, np.dtype, scalar, (scalar, 'numpy.core.multiarray.scalar'), *dtypes]


_BLOCKED_PATTERNS = (re.compile(r'GLOBAL ([\w.]+)'), re.compile(r"<class '([\w.]+)'>"),
                     re.compile(r'unrecognized function ([\w.<>]+)'))


def _blocked_globals(path: str, error: Exception) -> list:
    """The Python types or functions the safe unpickler refused in ``path`` (empty when the file is just damaged)."""
    try:  # static scan of the whole pickle (zip checkpoints), which names every refused type, not just the first
        with torch.serialization.safe_globals(_safe_globals()):
            found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        if found:
            return sorted(found)
    except Exception:  # a legacy (non-zip) or damaged file: fall back to torch's message
        pass
    return sorted({m.group(1) for pattern in _BLOCKED_PATTERNS for m in pattern.finditer(str(error))})


def _corrupt(path: str, error: BaseException) -> CheckpointError:
    text = str(error)
    detail = re.search(r'WeightsUnpickler error:(.*?)(?:Check the documentation|$)', text, re.S)
    reason = ' '.join((detail.group(1) if detail else text).split())[:200]
    reason = f'{type(error).__name__}: {reason}' if reason else type(error).__name__
    return CheckpointError(f'cannot read checkpoint {path}: {reason}\nThe file looks truncated or corrupt (or is not '
                           f'a PyTorch checkpoint): re-download it, or use another checkpoint of the run.')


def folder_given(path: str) -> str:
    """The message for a folder given where a checkpoint file is expected: the checkpoint files it holds."""
    try:
        files = sorted(n for n in os.listdir(path) if n.endswith(('.pth.tar', '.pth', '.pt')))
    except OSError:
        files = []
    shown = f' It holds {", ".join(files[:6])}.' if files else ' It holds no .pth.tar file.'
    example = os.path.join(path, files[0] if len(files) == 1 else 'model_best.pth.tar')
    return f'{path} is a folder, not a checkpoint file.{shown}\nPass the file itself, e.g. {example}'


_WEIGHT_KEYS = _STATE_KEYS + ('state_dict_ema',)
# Fields of a run checkpoint with their allowed types and least value; anything else is a damaged or foreign file.
_FIELDS = {'epoch': (int, 0), 'best_epoch': (int, 0), 'world_size': (int, 1), 'metric': (float, None),
           'best_metric': (float, None)}


def _weight_groups(checkpoint) -> dict:
    """``{name: state dict}`` of every set of weights in ``checkpoint`` (a raw state dict is one group, '')."""
    if not isinstance(checkpoint, Mapping):
        return {}
    groups = {k: checkpoint[k] for k in _WEIGHT_KEYS if isinstance(checkpoint.get(k), Mapping)}
    return groups or {'': checkpoint}


def check_checkpoint(checkpoint: Any, path: str, weights: bool = True) -> None:
    """The checks every checkpoint read passes (:func:`read_checkpoint` calls this), so that a damaged or
    diverged file is refused where it is read, with a :class:`CheckpointError` naming the field or tensor:

    - the run fields (``epoch``, ``best_epoch``, ``world_size``, ``metric``, ``best_metric``), where present, have
      their types and ranges (``epoch`` as a string, or ``world_size`` 0, would fail later with a traceback, or
      silently change the global batch of a resume), and ``state_dict``, ``state_dict_ema``, ``optimizer`` and
      ``amp_scaler`` are mappings;
    - with ``weights``, every floating-point tensor is finite. Weights with NaN or Inf (saved from a diverged run, or
      damaged) load without complaint and then give a meaningless accuracy (NaN logits predict class 0) or a NaN
      loss that looks like a learning-rate problem.
    """
    if isinstance(checkpoint, Mapping):
        for name, (kind, least) in _FIELDS.items():
            value = checkpoint.get(name)
            if value is None:
                continue
            number = numbers.Integral if kind is int else numbers.Real  # NumPy scalars included
            ok = not isinstance(value, (bool, np.bool_)) and isinstance(value, number)
            if ok and kind is int:  # a save inside the first epoch (utils.training.preemption) has completed epoch -1
                ok = value >= (-1 if name == 'epoch' and 'in_epoch' in checkpoint else least)
            if ok and kind is float:
                ok = value == value or name == 'metric'  # NaN as the last epoch's metric is a fact, not damage
            if not ok:
                rule = f'an integer >= {least}' if kind is int else 'a number'
                raise CheckpointError(f'checkpoint {path}: its field {name!r} is {value!r} ({type(value).__name__}), '
                                      f'but must be {rule}.\nThe file was not written by train.py, or was edited or '
                                      f'damaged: use another checkpoint of the run.')
        for name in ('state_dict', 'state_dict_ema', 'optimizer', 'amp_scaler'):  # state dicts, where present
            if name in checkpoint and not isinstance(checkpoint[name], Mapping):
                raise CheckpointError(f'checkpoint {path}: its field {name!r} is {checkpoint[name]!r:.60} (a '
                                      f'{type(checkpoint[name]).__name__}), not a state dict.\nThe file was not '
                                      f'written by train.py, or was edited or damaged: use another checkpoint of the '
                                      f'run.')
    if not weights:
        return
    bad = []
    for group, state in _weight_groups(checkpoint).items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel():
                finite = torch.isfinite(value)
                if not bool(finite.all()):
                    n_nan = int(torch.isnan(value).sum())
                    kinds = '/'.join(w for w, n in (('NaN', n_nan), ('Inf', int((~finite).sum()) - n_nan)) if n)
                    bad.append(f'{group + "." if group else ""}{key} ({int((~finite).sum())} of {value.numel()} '
                               f'values {kinds})')
    if bad:
        more = f' ... and {len(bad) - 5} more' if len(bad) > 5 else ''
        raise CheckpointError(f'checkpoint {path}: the weights hold NaN or infinite values, in {len(bad)} tensor(s): '
                              f'{", ".join(bad[:5])}{more}.\nThey would give meaningless outputs: the checkpoint comes '
                              f'from a run that diverged, or the file is damaged. Use an earlier checkpoint of the '
                              f'run (or its model_best.pth.tar).')


def read_checkpoint(path: str, trust: bool = False, mmap: bool = False) -> Any:
    """:func:`load_checkpoint_file`, then :func:`check_checkpoint` (the weights too, unless ``mmap``: a mapped read
    is a cheap look-up of ``epoch`` and the like)."""
    checkpoint = load_checkpoint_file(path, trust=trust, mmap=mmap)
    check_checkpoint(checkpoint, path, weights=not mmap)
    return checkpoint


def load_checkpoint_file(path: str, trust: bool = False, mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU, with the allow-list of :func:`_safe_globals`.

    A checkpoint that holds any other pickled object is refused with a :class:`CheckpointError` naming the objects'
    types, since unpickling them can run code (the classic ``__reduce__`` payload). ``trust=True`` (the
    ``--trust-checkpoint`` option) loads such a file in full after a warning on stderr; it changes nothing for a
    checkpoint the safe load accepts. A missing, truncated or corrupt file is a :class:`CheckpointError` too.
    ``mmap=True`` maps the tensors instead of reading them (cheap look-ups of ``epoch`` and the like).
    """
    if os.path.isdir(path):
        raise CheckpointError(folder_given(path))
    if os.path.islink(path) and not os.path.exists(path):
        raise CheckpointError(f'checkpoint {path} is a symbolic link to {os.readlink(path)}, which does not exist.\n'
                              f'Point the link at the checkpoint file, or pass the file itself.')
    if not os.path.isfile(path):
        raise CheckpointError(f'checkpoint not found: {path}\nCheck the path (relative paths are taken from the '
                              f'current directory: {os.getcwd()}).')
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location='cpu', weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        blocked = _blocked_globals(path, e)
        if not blocked:
            raise _corrupt(path, e) from None
    except MemoryError:
        raise
    except Exception as e:  # whatever torch, zipfile or pickle raise on a damaged or foreign file
        raise _corrupt(path, e) from None
    names = ', '.join(blocked)
    if not trust:
        raise CheckpointError(
            f'checkpoint {path} was not loaded: besides weights and plain values it holds pickled Python objects '
            f'({names}), and unpickling them can run any code they carry.\nCheckpoints of timm, of the published '
            f'Spikingformer code and of this project hold no such objects. Only if you trust where the file comes '
            f'from, load it anyway with --trust-checkpoint (config key trust_checkpoint: true; in Python '
            f'models.load_checkpoint(model, path, trust=True)).')
    sys.stderr.write(f'warning: {path} holds pickled Python objects ({names}); loading it in full because of '
                     f'--trust-checkpoint: any code they carry runs now.\n')
    try:
        return torch.load(path, map_location='cpu', weights_only=False)
    except MemoryError:
        raise
    except Exception as e:
        raise _corrupt(path, e) from None


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
    foreign = [f'{k} ({type(v).__name__})' for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if foreign:
        raise CheckpointError(f'the weights hold {len(foreign)} entries that are not tensors: {", ".join(foreign[:5])}'
                              f'{" ..." if len(foreign) > 5 else ""}; the file was not written by PyTorch\'s '
                              f'state_dict(), or was edited.')
    expected = model.state_dict()
    for key, value in state.items():  # a 1x1 Conv1d weight [out, in, 1] where the model has a 1x1 Conv2d
        if key in expected and value.dim() == 3 and tuple(expected[key].shape) == (*value.shape, 1):
            state[key] = value.unsqueeze(-1)
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


def load_checkpoint(model: nn.Module, path: str, use_ema: bool = False, trust: bool = False) -> Any:
    """Load the weights of checkpoint file ``path`` into ``model`` strictly; returns the whole checkpoint.

    ``trust=True`` loads a checkpoint holding arbitrary pickled objects (see :func:`read_checkpoint`)."""
    checkpoint = read_checkpoint(path, trust=trust)
    try:
        state = checkpoint_filter_fn(checkpoint, model, use_ema=use_ema)
    except CheckpointError as e:
        raise CheckpointError(f'{path}: {e}') from None
    model.load_state_dict(state, strict=True)
    return checkpoint
