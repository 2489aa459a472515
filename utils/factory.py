"""The model of a config, through timm's registry (``import models`` registers the Spikingformer variants)."""
import timm
from torch import nn

import models  # noqa: F401  (registers the models with timm)

from .config import Config, ConfigError


def build_model(cfg: Config) -> nn.Module:
    """``timm.create_model(cfg.model, ...)`` with the time steps, neuron backend and any non-null architecture
    overrides (num_heads, embed_dims, depths) of the config; ``num_classes`` null keeps the variant's."""
    if cfg.model not in timm.list_models():
        near = [m for m in timm.list_models('*spikingformer*')] + ['Spikingformer']
        raise ConfigError(f'unknown model {cfg.model!r}; registered Spikingformer models: {", ".join(near)}')
    kwargs = dict(T=cfg.time_steps, backend=cfg.neuron_backend)
    for name in ('num_classes', 'num_heads', 'embed_dims', 'depths'):
        if getattr(cfg, name) is not None:
            kwargs[name] = getattr(cfg, name)
    try:
        model = timm.create_model(cfg.model, **kwargs)
    except (ValueError, RuntimeError) as e:
        raise ConfigError(f'cannot build model {cfg.model!r} with {kwargs}: {e}') from None
    if cfg.grad_checkpointing:  # as timm's train.py: after creation, through the model's own switch
        model.set_grad_checkpointing(True)
    return model
