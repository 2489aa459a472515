"""The model of a config, through timm's registry (``import models`` registers the Spikingformer and Spikformer
variants), and the honest name of the architecture that runs.

A registered variant's name (``spikingformer_cifar_4_256``) promises an architecture; config keys may override it
(``depths``, ``embed_dims``, ``num_heads``, ``time_steps``). :func:`architecture_overrides` lists the keys whose value
differs from the variant's, :func:`architecture_label` is the name for the start line and ``args.yaml``
(``spikingformer_cifar_4_256 (overridden: depths 1, embed_dims 32, num_heads 2, T 2)``) and :func:`run_name` the
same for a folder name (``spikingformer_cifar_4_256-depths1-embed_dims32-num_heads2-T2``). The last two are pure
functions of the model name and the overrides, for every code that names a run.
"""
import functools
import pkgutil
from typing import Mapping, Optional

import timm
import torch
from timm.models import is_model_in_modules
from torch import nn

import models  # noqa: F401  (registers the models with timm)
from models import SPIKFORMER_VARIANTS, VARIANTS

from utils.config import Config, ConfigError

# as utils.data.loaders.DVS_DATASETS (not imported: that module is heavy)
EVENT_DATASETS = ('dvs128-gesture', 'cifar10-dvs')


def project_models() -> list:
    """The timm names registered by this project's ``models`` package (the Spikingformer variants and any model added
    there later). timm's own models are not among them: they take no time steps or neuron backend, and this
    project's training, checkpoints and energy reports are for its spiking models only."""
    modules = [m.name for m in pkgutil.iter_modules(models.__path__)]
    return [name for name in timm.list_models() if is_model_in_modules(name, modules)]


def _create(cfg: Config) -> nn.Module:
    kwargs = dict(T=cfg.time_steps, backend=cfg.neuron_backend)
    for name in ('num_classes', 'num_heads', 'embed_dims', 'depths'):
        if getattr(cfg, name) is not None:
            kwargs[name] = getattr(cfg, name)
    try:
        return timm.create_model(cfg.model, **kwargs)
    except (ValueError, RuntimeError, TypeError) as e:
        raise ConfigError(f'cannot build model {cfg.model!r} with {kwargs}: {e}') from None


# config key -> (model attribute, label): the architecture numbers a config may override
ARCHITECTURE_KEYS = {'depths': 'depths', 'embed_dims': 'embed_dims', 'num_heads': 'num_heads', 'time_steps': 'T'}


@functools.lru_cache(maxsize=None)
def registered_architecture(name: str) -> Optional[dict]:
    """``{'depths', 'embed_dims', 'num_heads', 'T'}`` of registered variant ``name`` as its entry point builds it
    (on the ``meta`` device: no memory, no initialisation), or None for any other name: the generic
    ``Spikingformer`` and ``Spikformer`` fix no architecture, and other timm models (or typos, refused later by :func:`build_model`)
    have none of these numbers."""
    if name not in VARIANTS + SPIKFORMER_VARIANTS:
        return None
    with torch.device('meta'):
        model = timm.create_model(name)
    return {label: getattr(model, label) for label in ARCHITECTURE_KEYS.values()}


def architecture_overrides(cfg) -> dict:
    """``{label: value}`` of the config's architecture keys whose value differs from the registered variant's, in
    the order of :data:`ARCHITECTURE_KEYS` (empty when nothing is overridden or the model fixes nothing)."""
    registered = registered_architecture(cfg.model)
    if registered is None:
        return {}
    values = {label: getattr(cfg, key) for key, label in ARCHITECTURE_KEYS.items()}
    return {label: value for label, value in values.items() if value is not None and value != registered[label]}


def architecture_label(model: str, overrides: Mapping) -> str:
    """``model``, or ``model (overridden: depths 1, embed_dims 32, ...)`` when ``overrides`` is not empty."""
    if not overrides:
        return model
    return f'{model} (overridden: {", ".join(f"{k} {v}" for k, v in overrides.items())})'


def run_name(model: str, overrides: Mapping) -> str:
    """The label as a folder name: ``model``, or ``model-depths1-embed_dims32-...``."""
    return '-'.join([model] + [f'{k}{v}' for k, v in overrides.items()])


def override_note(cfg) -> Optional[str]:
    """A start-up line when the config overrides a registered variant's architecture: where each value comes from
    (the config file or the command line) and the variant's own value; None otherwise."""
    overrides = architecture_overrides(cfg)
    if not overrides:
        return None
    registered = registered_architecture(cfg.model)
    by_origin = {}
    for key, label in ARCHITECTURE_KEYS.items():
        if label in overrides:
            origin = ('the command line' if key in cfg.command_line else
                      f'config file {cfg.source}' if cfg.source else 'the config')
            by_origin.setdefault(origin, []).append(f'{key} {overrides[label]} (registered: {registered[label]})')
    return '; '.join(f'note: {origin} sets the architecture of the registered {cfg.model}: {", ".join(parts)}'
                     for origin, parts in by_origin.items())


def check_model(cfg: Config) -> None:
    """``cfg.model`` is one of :func:`project_models`, and its input layout fits ``cfg.dataset``: event frames
    ``[B, T, 2, H, W]`` for the DVS data sets, images ``[B, 3, H, W]`` for the others. Checked on a model built on
    PyTorch's ``meta`` device (no memory, no weights: well under a second even for the largest variant), so that
    a start refuses the pair before it reads data or writes a run folder; otherwise the model's forward would
    fail at the first batch."""
    known = project_models()
    if cfg.model not in known:
        timm_own = cfg.model in timm.list_models()
        raise ConfigError(f'unknown model {cfg.model!r}' + (' (a timm model, not one of this project\'s spiking '
                                                           'models)' if timm_own else '') +
                          f'; this project\'s models: {", ".join(known)}.\nFix: --model with one of them.')
    with torch.device('meta'):
        model = _create(cfg)
    events = bool(getattr(model, 'events', False))
    channels = getattr(model, 'in_channels', None)
    wants_events = cfg.dataset in EVENT_DATASETS
    if events != wants_events or channels != (2 if wants_events else 3):
        have = f'{"event frames" if events else "images"} with {channels} channels'
        need = 'event frames with 2 channels (polarities)' if wants_events else 'images with 3 channels'
        fit = [m for m in known if ('_dvs_' in m) == wants_events and m not in ('Spikingformer', 'Spikformer')]
        raise ConfigError(f'model {cfg.model!r} takes {have}, but data set {cfg.dataset!r} gives {need}.\nFix: '
                          f'--model with a model for {cfg.dataset}, e.g. {", ".join(fit)}; or another --dataset.')


def build_model(cfg: Config, training: bool = False) -> nn.Module:
    """``timm.create_model(cfg.model, ...)`` with the time steps, neuron backend and any non-null architecture
    overrides (num_heads, embed_dims, depths) of the config; ``num_classes`` null keeps the variant's. The name and
    the input layout are checked first (:func:`check_model`); ``training`` applies ``grad_checkpointing``."""
    check_model(cfg)
    model = _create(cfg)
    if training and cfg.grad_checkpointing:  # as timm's train.py, through the model's own switch; an evaluation
        model.set_grad_checkpointing(True)  # reads no training key
    return model
