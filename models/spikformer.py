"""The Spikformer baseline (ZK-Zhou/spikformer), the model the Spikingformer paper compares against, in timm.

It is built from the same building blocks as Spikingformer (models.layers), with the published differences as
options of those blocks rather than a second copy of the network (docs/spikformer.md lists them with their sources):

* ``neuron_order='conv_bn_lif'``: every conv/linear is followed by BatchNorm, then a LIF. Both residual branches
  end in spikes, so the residual stream adds spikes to spikes and the blocks' first layers see spike counts 0, 1, 2.
* ``rpe=True``: the SPS tokenizer's last stage has one more LIF and adds its pooled input spikes (the "rpe" branch).
* ``linear=True`` (CIFAR layout only, as its ``cifar10/model.py``): ``nn.Linear`` attention and MLP layers with
  biases (``q_linear``, ..., ``fc1_linear``) instead of 1x1 convolutions.
* ``attn_scale=0.25`` (DVS layout, as its ``cifar10dvs/model.py``; the other two files use 0.125).

Every neuron has tau 2.0 in all three published files, the DVS one included (Spikingformer's DVS models use 1.5).
The published DVS model also holds a ``pos_embed`` parameter and a final ``norm`` LayerNorm that its forward never
uses; they are kept here (published checkpoints carry them, and the published parameter count includes them) but
frozen (``requires_grad=False``): with no gradient, AdamW never changed them in the published runs either, and a
frozen tensor needs no ``find_unused_parameters`` under DistributedDataParallel. The blocks' unused ``norm1``/``norm2``
LayerNorms and the DVS file's unused ``res_lif`` (no parameters) are not built, as for Spikingformer.
"""
from typing import Optional

import torch
from timm.layers import trunc_normal_
from timm.models import generate_default_cfgs, register_model
from torch import nn

from .pretrained import variant_cfg
from .spikingformer import SpikingformerModel, _create

# Per published file: (linear layers, attention scale). tau is 2.0 in all three.
SPIKFORMER_LAYOUTS = {
    'imagenet': dict(linear=False, attn_scale=0.125),  # imagenet/model.py
    'cifar': dict(linear=True, attn_scale=0.125),  # cifar10/model.py
    'dvs': dict(linear=False, attn_scale=0.25),  # cifar10dvs/model.py
}
SPIKFORMER_TAU = 2.0


class SpikformerModel(SpikingformerModel):
    """Spikformer: :class:`models.SpikingformerModel` with the baseline's options set from its ``layout``.

    Takes the same arguments (published keyword names, ``layout``, ``backend``); ``tau``, ``linear`` and
    ``attn_scale`` default to the published file's values for the layout and may be overridden. The ImageNet file's
    forward hard-codes T=4; here ``T`` is an argument (default 4) like everywhere else.
    """

    def __init__(self, layout: str = 'imagenet', tau: Optional[float] = None, linear: Optional[bool] = None,
                 attn_scale: Optional[float] = None, **kwargs):
        if layout not in SPIKFORMER_LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(SPIKFORMER_LAYOUTS)}")
        spec = SPIKFORMER_LAYOUTS[layout]
        super().__init__(layout=layout, tau=SPIKFORMER_TAU if tau is None else tau,
                         linear=spec['linear'] if linear is None else linear,
                         attn_scale=spec['attn_scale'] if attn_scale is None else attn_scale,
                         neuron_order='conv_bn_lif', rpe=True, **kwargs)
        if layout == 'dvs':
            self._add_unused_published_parameters()

    def _add_unused_published_parameters(self) -> None:
        """The DVS file's ``pos_embed`` ``[1, patches, C]`` and final ``norm`` LayerNorm, frozen (never used)."""
        patches = (self.img_size[0] // self.patch_size) * (self.img_size[1] // self.patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, patches, self.embed_dims), requires_grad=False)
        trunc_normal_(self.pos_embed, std=.02)
        self.norm = nn.LayerNorm(self.embed_dims, eps=1e-6).requires_grad_(False)


_IMAGENET = dict(layout='imagenet', img_size_h=224, img_size_w=224, in_channels=3, num_classes=1000, T=4)
_CIFAR = dict(layout='cifar', img_size_h=32, img_size_w=32, in_channels=3, num_classes=10, T=4)
_DVS = dict(layout='dvs', img_size_h=128, img_size_w=128, in_channels=2, num_classes=10, T=16)
# timm's registry of pretrained configs, as for Spikingformer (models.pretrained.variant_cfg)
default_cfgs = generate_default_cfgs({
    **{f'spikformer_8_{d}': variant_cfg('imagenet', 3, 224, 1000) for d in (384, 512, 768)},
    **{f'spikformer_cifar_{v}': variant_cfg('cifar', 3, 32, 10) for v in ('4_256', '2_384', '4_384')},
    'spikformer_dvs_2_256': variant_cfg('dvs', 2, 128, 10),
})


@register_model
def spikformer_8_384(pretrained=False, **kwargs) -> SpikformerModel:
    return _create(pretrained, dict(_IMAGENET, depths=8, embed_dims=384, num_heads=8), kwargs, 'spikformer_8_384',
                   SpikformerModel)


@register_model
def spikformer_8_512(pretrained=False, **kwargs) -> SpikformerModel:
    return _create(pretrained, dict(_IMAGENET, depths=8, embed_dims=512, num_heads=8), kwargs, 'spikformer_8_512',
                   SpikformerModel)


@register_model
def spikformer_8_768(pretrained=False, **kwargs) -> SpikformerModel:
    return _create(pretrained, dict(_IMAGENET, depths=8, embed_dims=768, num_heads=8), kwargs, 'spikformer_8_768',
                   SpikformerModel)


@register_model
def spikformer_cifar_4_256(pretrained=False, **kwargs) -> SpikformerModel:
    return _create(pretrained, dict(_CIFAR, depths=4, embed_dims=256, num_heads=16), kwargs, 'spikformer_cifar_4_256',
                   SpikformerModel)


@register_model
def spikformer_cifar_2_384(pretrained=False, **kwargs) -> SpikformerModel:
    return _create(pretrained, dict(_CIFAR, depths=2, embed_dims=384, num_heads=12), kwargs, 'spikformer_cifar_2_384',
                   SpikformerModel)


@register_model
def spikformer_cifar_4_384(pretrained=False, **kwargs) -> SpikformerModel:
    return _create(pretrained, dict(_CIFAR, depths=4, embed_dims=384, num_heads=12), kwargs, 'spikformer_cifar_4_384',
                   SpikformerModel)


@register_model
def spikformer_dvs_2_256(pretrained=False, **kwargs) -> SpikformerModel:
    """CIFAR10-DVS (10 classes, the published default) or DVS128 Gesture (``num_classes=11``); ``T`` frames."""
    return _create(pretrained, dict(_DVS, depths=2, embed_dims=256, num_heads=16), kwargs, 'spikformer_dvs_2_256',
                   SpikformerModel)


@register_model
def Spikformer(pretrained=False, **kwargs) -> SpikformerModel:  # noqa: N802 (the published class name)
    """The published generic entry point (published keyword names, plus ``layout``): every architecture number comes
    from the caller. Without ``layout``, ``patch_size`` 4 is the CIFAR file, anything else the ImageNet one; the DVS
    file needs ``layout='dvs'``."""
    if 'layout' not in kwargs:
        kwargs['layout'] = 'cifar' if kwargs.get('patch_size') == 4 else 'imagenet'
    return _create(pretrained, {}, kwargs, 'Spikformer', SpikformerModel)


SPIKFORMER_VARIANTS = ('spikformer_8_384', 'spikformer_8_512', 'spikformer_8_768', 'spikformer_cifar_4_256',
                       'spikformer_cifar_2_384', 'spikformer_cifar_4_384', 'spikformer_dvs_2_256')
