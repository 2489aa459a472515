"""The model of a config, through timm's registry (``import models`` registers the Spikingformer variants)."""
import pkgutil

import timm
import torch
from timm.models import is_model_in_modules
from torch import nn

import models  # noqa: F401  (registers the models with timm)

from .config import Config, ConfigError

EVENT_DATASETS = ('dvs128-gesture', 'cifar10-dvs')  # as utils.data.DVS_DATASETS (not imported: that module is heavy)


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
        fit = [m for m in known if ('_dvs_' in m) == wants_events and m != 'Spikingformer']
        raise ConfigError(f'model {cfg.model!r} takes {have}, but data set {cfg.dataset!r} gives {need}.\nFix: '
                          f'--model with a model for {cfg.dataset}, e.g. {", ".join(fit)}; or another --dataset.')


def build_model(cfg: Config) -> nn.Module:
    """``timm.create_model(cfg.model, ...)`` with the time steps, neuron backend and any non-null architecture
    overrides (num_heads, embed_dims, depths) of the config; ``num_classes`` null keeps the variant's. The name and
    the input layout are checked first (:func:`check_model`)."""
    check_model(cfg)
    return _create(cfg)
