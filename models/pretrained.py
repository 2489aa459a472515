"""timm's ``pretrained`` convention for local files: ``timm.create_model(name, pretrained=True,
pretrained_cfg_overlay=dict(file='path/to/official.pth.tar'))``.

No Spikingformer weights are hosted where timm downloads from: the official checkpoints (ImageNet Spikingformer-8-768
and CIFAR-10 Spikingformer-4-384-400E) are linked from the published repository's README, behind a password. So
``pretrained=True`` needs the downloaded file, given as timm's ``file`` key of the pretrained config, and loads it
through this project's safe reader and checkpoint filter (``models.checkpoint``: ``weights_only``, the published
parameter names, DDP's ``module.`` prefix). timm's own ``load_pretrained`` is not used: it unpickles without this
project's allow-list (the published checkpoints hold an ``argparse.Namespace``) and does not know the published
names. As timm, a ``num_classes`` other than the checkpoint's keeps this model's freshly initialised head.
"""
from typing import Optional

from torch import nn

from .checkpoint import CheckpointError, checkpoint_filter_fn, read_checkpoint, renamed_state_dict

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PAPER = 'arXiv:2304.11954'
OFFICIAL_WEIGHTS = ('the official checkpoints (ImageNet Spikingformer-8-768, CIFAR-10 Spikingformer-4-384-400E) '
                    'are linked from the README of the published repository, https://github.com/TheBrainLab/'
                    'Spikingformer (download password: abcd)')

SPIKFORMER_WEIGHTS = ('the Spikformer authors link no checkpoints from their README (ZK-Zhou/spikformer); a '
                      'Spikformer checkpoint of your own, or one shared with you, loads the same way')


def variant_cfg(layout: str, in_channels: int, size: int, num_classes: int, **extra) -> dict:
    """A variant's pretrained config (timm's ``pretrained_cfg`` keys): the paper's input size, the data set's mean
    and std, and ``crop_pct`` 1.0 and bicubic interpolation, what the published evaluation used. ``layout`` is
    'imagenet', 'cifar' or 'dvs' (event frames: no normalisation). Other model families (e.g. Spikformer) call it
    with their own numbers."""
    cifar, events = layout == 'cifar', layout == 'dvs'
    mean, std = ((0.0,) * in_channels, (1.0,) * in_channels) if events else \
        (CIFAR_MEAN, CIFAR_STD) if cifar else (IMAGENET_MEAN, IMAGENET_STD)
    return dict(dict(url='', file=None, num_classes=num_classes, input_size=(in_channels, size, size),
                     pool_size=None, crop_pct=1.0, interpolation='bicubic', mean=mean, std=std,
                     first_conv='patch_embed.stem_conv', classifier='head', paper_ids=PAPER), **extra)


def pretrained_file(name: str, pretrained_cfg: Optional[dict], overlay: Optional[dict]) -> str:
    """The local file of ``pretrained=True`` (timm's ``file`` key, from ``pretrained_cfg_overlay`` or a
    ``pretrained_cfg`` dict), or a RuntimeError saying where the official weights are and how to pass them."""
    for source in (overlay, pretrained_cfg):
        if isinstance(source, dict) and source.get('file'):
            return source['file']
    where = SPIKFORMER_WEIGHTS if name.lower().startswith('spikformer') else OFFICIAL_WEIGHTS
    raise RuntimeError(f'{name}: weights are not downloadable through timm; {where}.\n'
                       f'Pass the downloaded file: timm.create_model({name!r}, pretrained=True, '
                       f'pretrained_cfg_overlay=dict(file=\'path/to/checkpoint.pth.tar\')), or build the model with '
                       f'pretrained=False and call models.load_checkpoint(model, path).')


def load_pretrained_file(model: nn.Module, path: str) -> None:
    """Load checkpoint ``path`` into ``model`` strictly through the checkpoint filter, except the classifier head
    when the number of classes differs (it keeps its initialisation, as timm's ``pretrained=True, num_classes=N``)."""
    checkpoint = read_checkpoint(path)
    try:
        state = renamed_state_dict(checkpoint)
        own = model.state_dict()
        head = [k for k in own if k.startswith('head.')]
        if any(k in state and tuple(state[k].shape) != tuple(own[k].shape) for k in head):
            state.update({k: own[k] for k in head})
        state = checkpoint_filter_fn(state, model)
    except CheckpointError as e:
        raise CheckpointError(f'pretrained file {path}: {e}') from None
    model.load_state_dict(state, strict=True)
