"""Spikingformer: one model definition for every published variant, registered with timm.

The published variants are registered names whose entry points only set architecture numbers (docs/recipe.md section 3).
``Spikingformer`` is the published generic entry point: it takes the published keyword names, including those the
published scripts pass although they change nothing (accepted and ignored, see ``IGNORED_KWARGS``).
"""
import functools
from typing import Optional

import torch
from timm.layers import trunc_normal_
from timm.models import generate_default_cfgs, register_model
from torch import nn

from .activation_checkpoint import checkpoint_sequence
from .layers import ATTENTION_SCALE, EncoderBlock, SpikingTokenizer
from .neuron import lif
from .pretrained import load_pretrained_file, pretrained_file, variant_cfg

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# Tokenizer layouts (docs/recipe.md section 2). 'dvs' is the ImageNet tokenizer with tau 1.5 and event input [B, T, C,
# H, W].
LAYOUTS = {
    'imagenet': dict(pool_stages=(1, 2, 3, 4), tau=2.0, events=False),
    'cifar': dict(pool_stages=(3, 4), tau=2.0, events=False),
    'dvs': dict(pool_stages=(1, 2, 3, 4), tau=1.5, events=True),
}

# Keywords the published scripts pass that have no effect on the published model: no qkv bias or scale is used
# (the scale is fixed), sr_ratios is unused, dropout/drop-path/drop-block modules are never applied, norm_layer
# only builds the unused LayerNorms. The rest are timm's create_model plumbing.
IGNORED_KWARGS = ('qkv_bias', 'qk_scale', 'sr_ratios', 'drop_rate', 'attn_drop_rate', 'drop_path_rate',
                  'drop_block_rate', 'norm_layer', 'pretrained_cfg', 'pretrained_cfg_overlay', 'cache_dir')


class SpikingformerModel(nn.Module):
    """tokenizer -> encoder blocks -> mean over tokens -> mean over T -> linear head.

    Args (published names): ``img_size_h``/``img_size_w`` (nominal input size, for data configs and reports),
    ``patch_size`` (checked against the layout: 16 for 'imagenet'/'dvs', 4 for 'cifar'), ``in_channels``,
    ``num_classes``, ``embed_dims``, ``num_heads``, ``mlp_ratios``, ``depths``, ``T`` (time steps).
    Additions: ``layout`` ('imagenet' | 'cifar' | 'dvs'), ``tau`` (defaults to the layout's: 2.0, or 1.5 for
    'dvs'), ``backend`` of the neurons ('auto' | 'torch' | 'cupy' | 'fused', see models.neuron).
    Options that build the Spikformer baseline instead (models.spikformer sets them; defaults: Spikingformer):
    ``neuron_order`` ('lif_conv_bn' | 'conv_bn_lif'), ``linear`` (nn.Linear attention and MLP), ``attn_scale``,
    ``rpe`` (the SPS tokenizer's rpe branch); see models.layers.

    Input: images ``[B, C, H, W]`` (repeated T times: direct encoding) or, for 'dvs', event frames
    ``[B, T, C, H, W]``. Output: logits ``[B, num_classes]``.
    """

    def __init__(self, layout: str = 'imagenet', img_size_h: int = 224, img_size_w: int = 224,
                 patch_size: Optional[int] = None, in_channels: int = 3, num_classes: int = 1000,
                 embed_dims: int = 384, num_heads: int = 8, mlp_ratios: float = 4, depths: int = 8, T: int = 4,
                 tau: Optional[float] = None, backend: str = 'auto', neuron_order: str = 'lif_conv_bn',
                 linear: bool = False, attn_scale: float = ATTENTION_SCALE, rpe: bool = False):
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
        spec = LAYOUTS[layout]
        layout_patch = 2 ** len(spec['pool_stages'])
        if patch_size is not None and patch_size != layout_patch:
            raise ValueError(f"layout {layout!r} has patch size {layout_patch}, not {patch_size}")
        if embed_dims % 8:
            raise ValueError(f'embed_dims must be a multiple of 8, got {embed_dims}')
        self.layout, self.T, self.num_classes = layout, int(T), num_classes
        self.events = spec['events']
        self.img_size = (img_size_h, img_size_w)
        self.patch_size = layout_patch
        self.in_channels, self.embed_dims, self.num_heads, self.depths = in_channels, embed_dims, num_heads, depths
        self.tau = float(tau if tau is not None else spec['tau'])
        make_lif = functools.partial(lif, tau=self.tau, backend=backend)

        self.patch_embed = SpikingTokenizer(in_channels, embed_dims, spec['pool_stages'], make_lif, rpe=rpe)
        self.block = nn.ModuleList(EncoderBlock(embed_dims, num_heads, mlp_ratios, make_lif, neuron_order=neuron_order,
                                                linear=linear, scale=attn_scale) for _ in range(depths))
        self.head = nn.Linear(embed_dims, num_classes) if num_classes > 0 else nn.Identity()
        self.grad_checkpointing = False
        self.grad_checkpointing_tokenizer = False
        self.apply(self._init_weights)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True, tokenizer: bool = True) -> None:
        """timm's switch: recompute the encoder blocks (and, with ``tokenizer``, the stem and the tokenizer stages) in
        the backward pass instead of keeping their activations. Same loss, logits, gradients and BatchNorm statistics
        as without (``models.activation_checkpoint``, ``models.fire_recompute``); only memory and time change.
        Evaluation is unaffected. The last block keeps its activations (its backward runs first, so recomputing it
        would only cost time), as do two parts of the tokenizer (:meth:`SpikingTokenizer.forward_checkpointed`)."""
        self.grad_checkpointing = bool(enable)
        self.grad_checkpointing_tokenizer = bool(enable and tokenizer)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def to_time_major(self, x: torch.Tensor) -> torch.Tensor:
        """Model input -> ``[T, B, C, H, W]``."""
        if self.events:
            if x.dim() != 5:
                raise ValueError(f'expected event frames [B, T, C, H, W], got shape {tuple(x.shape)}')
            if x.shape[1] != self.T:
                raise ValueError(f'event input has {x.shape[1]} time steps but the model was built with T={self.T}')
            return x.transpose(0, 1)
        if x.dim() != 4:
            raise ValueError(f'expected images [B, C, H, W], got shape {tuple(x.shape)}')
        return x.unsqueeze(0).repeat(self.T, 1, 1, 1, 1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Model input -> output of the last block, ``[T, B, C, H', W']``."""
        x = self.to_time_major(x)
        x = self.patch_embed.forward_checkpointed(x) if self.grad_checkpointing_tokenizer else self.patch_embed(x)
        if self.grad_checkpointing:  # the last block's backward runs first: recomputing it would only cost time
            return checkpoint_sequence(self.block, x, plain_last=1)
        for blk in self.block:
            x = blk(x)
        return x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.flatten(3).mean(3).mean(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _create(pretrained: bool, arch: dict, kwargs: dict, name: str = 'Spikingformer',
            cls: type = SpikingformerModel) -> SpikingformerModel:
    """The model; ``pretrained=True`` loads the local file of ``pretrained_cfg_overlay=dict(file=...)``
    (``models.pretrained``). ``model.pretrained_cfg`` describes this instance (its classes and input size)."""
    file = pretrained_file(name, kwargs.get('pretrained_cfg'), kwargs.get('pretrained_cfg_overlay')) \
        if pretrained else None
    for key in IGNORED_KWARGS:
        kwargs.pop(key, None)
    model = cls(**{**arch, **kwargs})
    model.pretrained_cfg = model.default_cfg = variant_cfg(
        model.layout, model.in_channels, model.img_size[0], model.num_classes, architecture=name, file=file)
    if file:
        load_pretrained_file(model, file)
    return model


_IMAGENET = dict(layout='imagenet', img_size_h=224, img_size_w=224, in_channels=3, num_classes=1000, T=4)
_CIFAR = dict(layout='cifar', img_size_h=32, img_size_w=32, in_channels=3, num_classes=10, T=4)
_DVS = dict(layout='dvs', img_size_h=128, img_size_w=128, in_channels=2, T=16)
# timm's registry of pretrained configs (timm.models.get_pretrained_cfg(name)); register_model reads it.
default_cfgs = generate_default_cfgs({
    **{f'spikingformer_8_{d}': variant_cfg('imagenet', 3, 224, 1000) for d in (384, 512, 768)},
    **{f'spikingformer_cifar_{v}': variant_cfg('cifar', 3, 32, 10) for v in ('4_256', '2_384', '4_384')},
    'spikingformer_dvs_2_256': variant_cfg('dvs', 2, 128, 11),
})


@register_model
def spikingformer_8_384(pretrained=False, **kwargs) -> SpikingformerModel:
    return _create(pretrained, dict(_IMAGENET, depths=8, embed_dims=384, num_heads=8), kwargs, 'spikingformer_8_384')


@register_model
def spikingformer_8_512(pretrained=False, **kwargs) -> SpikingformerModel:
    return _create(pretrained, dict(_IMAGENET, depths=8, embed_dims=512, num_heads=8), kwargs, 'spikingformer_8_512')


@register_model
def spikingformer_8_768(pretrained=False, **kwargs) -> SpikingformerModel:
    return _create(pretrained, dict(_IMAGENET, depths=8, embed_dims=768, num_heads=8), kwargs, 'spikingformer_8_768')


@register_model
def spikingformer_cifar_4_256(pretrained=False, **kwargs) -> SpikingformerModel:
    return _create(pretrained, dict(_CIFAR, depths=4, embed_dims=256, num_heads=16), kwargs,
                   'spikingformer_cifar_4_256')


@register_model
def spikingformer_cifar_2_384(pretrained=False, **kwargs) -> SpikingformerModel:
    return _create(pretrained, dict(_CIFAR, depths=2, embed_dims=384, num_heads=12), kwargs,
                   'spikingformer_cifar_2_384')


@register_model
def spikingformer_cifar_4_384(pretrained=False, **kwargs) -> SpikingformerModel:
    return _create(pretrained, dict(_CIFAR, depths=4, embed_dims=384, num_heads=12), kwargs,
                   'spikingformer_cifar_4_384')


@register_model
def spikingformer_dvs_2_256(pretrained=False, **kwargs) -> SpikingformerModel:
    """DVS128 Gesture (11 classes, the default) or CIFAR10-DVS (``num_classes=10``); ``T`` is the frame count."""
    return _create(pretrained, dict(_DVS, depths=2, embed_dims=256, num_heads=16, num_classes=11), kwargs,
                   'spikingformer_dvs_2_256')


@register_model
def Spikingformer(pretrained=False, **kwargs) -> SpikingformerModel:  # noqa: N802 (the published name)
    """The published generic entry point: every architecture number comes from the caller.

    Without ``layout``, the published ``patch_size`` decides it as the published code did by file: 4 is the CIFAR
    tokenizer, anything else the ImageNet one.
    """
    if 'layout' not in kwargs:
        kwargs['layout'] = 'cifar' if kwargs.get('patch_size') == 4 else 'imagenet'
    return _create(pretrained, {}, kwargs)


VARIANTS = ('spikingformer_8_384', 'spikingformer_8_512', 'spikingformer_8_768', 'spikingformer_cifar_4_256',
            'spikingformer_cifar_2_384', 'spikingformer_cifar_4_384', 'spikingformer_dvs_2_256')
