"""Building blocks of Spikingformer (docs/recipe.md section 2): tokenizer, spiking self-attention, MLP, encoder block.

Every activation is time-first ``[T, B, ...]``. Convolutions and BatchNorm run on ``[T*B, ...]`` (time merged
into the batch) and are reshaped back. Each branch starts with a LIF, so every convolution inside the encoder
blocks sees binary spikes, while the residual stream carries real-valued BatchNorm outputs ("spike-driven
residual"). Parameter names inside the blocks are the published ones; the tokenizer uses one naming for both
published layouts, and :func:`models.checkpoint_filter_fn` maps the published names onto it.
"""
from typing import Callable, Sequence

import torch
from torch import nn

from . import fire_recompute
from .activation_checkpoint import checkpoint_module, checkpoint_sequence

MakeLIF = Callable[..., nn.Module]

# Fixed attention scale of the published model (inherited from Spikformer), not 1/sqrt(head_dim): Q, K and V are
# binary, so there is no softmax to keep in range, and a power of two multiplies exactly in every dtype.
ATTENTION_SCALE = 0.125

# Where each branch's neuron sits. 'lif_conv_bn' (Spikingformer, the default): every branch starts with a LIF, so the
# residual stream carries real BatchNorm outputs and every convolution sees 0/1 spikes. 'conv_bn_lif' (the Spikformer
# baseline, docs/spikformer.md): every conv/linear is followed by BatchNorm and then a LIF, so both branches end in
# spikes and the residual stream adds spikes to spikes: the blocks' first layers see spike counts 0, 1, 2, ...
NEURON_ORDERS = ('lif_conv_bn', 'conv_bn_lif')


def _check_order(order: str) -> str:
    if order not in NEURON_ORDERS:
        raise ValueError(f"unknown neuron_order {order!r}; choose one of {', '.join(NEURON_ORDERS)}")
    return order


def _pointwise(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution or an ``nn.Linear`` on channel-first tokens ``[TB, C, N]`` -> ``[TB, C', N]``.

    Both compute the same per-token channel mixing; the published Spikformer CIFAR file uses ``nn.Linear`` on
    token-last tensors (with a bias on Q, K and V too), so the linear is applied on the transposed view here.
    """
    if isinstance(layer, nn.Linear):
        return layer(x.transpose(1, 2)).transpose(1, 2)
    return layer(x)


def _merge_time(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(0, 1)


def _split_time(x: torch.Tensor, T: int) -> torch.Tensor:
    return x.reshape(T, x.shape[0] // T, *x.shape[1:])


class TokenizerStage(nn.Module):
    """LIF -> (max pool 3x3/2) -> conv 3x3 -> BatchNorm.

    ``rpe=True`` (the Spikformer tokenizer's last stage, its "relative position embedding"): the BatchNorm output goes
    through one more LIF (``rpe_lif``) and the stage's pooled input spikes are added to it, so the stage outputs spike
    counts 0, 1, 2.
    """

    def __init__(self, in_channels: int, out_channels: int, pool: bool, make_lif: MakeLIF, rpe: bool = False):
        super().__init__()
        self.lif = make_lif()
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if pool else nn.Identity()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        if rpe:
            if in_channels != out_channels:
                raise ValueError('the rpe branch adds its input to its output: it needs in_channels == out_channels')
            self.rpe_lif = make_lif()
        else:
            self.rpe_lif = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.fire(x))

    def fire(self, x: torch.Tensor) -> torch.Tensor:
        """The stage's LIF, then its max pooling: ``[T, B, C, H, W]`` -> spikes ``[T, B, C, H', W']``."""
        return _split_time(self.pool(_merge_time(self.lif(x))), x.shape[0])

    def project(self, s: torch.Tensor) -> torch.Tensor:
        """Conv-BatchNorm (and the ``rpe`` branch) on the pooled spikes ``s`` of :meth:`fire`."""
        T = s.shape[0]
        out = _split_time(self.bn(self.conv(_merge_time(s))), T)
        if self.rpe_lif is None:
            return out
        return self.rpe_lif(out) + s


class SpikingTokenizer(nn.Module):
    """Convolutional tokenizer: conv-BN on the raw input, then four LIF-(pool)-conv-BN stages.

    Channel widths: in -> C/8 -> C/4 -> C/2 -> C -> C. The two published layouts differ only in which stages pool:
    ImageNet and DVS pool in stages 1-4 (patch size 16), CIFAR in stages 3-4 (patch size 4). The first convolution
    sees the raw image or event counts, not spikes (it is the one layer counted as MACs in the energy estimate).
    Spatial sizes are computed from the input, not hard-coded.

    ``rpe=True`` is Spikformer's SPS tokenizer: its conv-BN-LIF-(pool) stages are the same sequence of operations
    (their LIF is the next stage's first LIF here), and its ``rpe`` conv-BN-LIF, added to the pooled spikes, is the
    last stage with :class:`TokenizerStage`'s ``rpe`` option.
    """

    def __init__(self, in_channels: int, embed_dims: int, pool_stages: Sequence[int], make_lif: MakeLIF,
                 rpe: bool = False):
        super().__init__()
        widths = [embed_dims // 8, embed_dims // 4, embed_dims // 2, embed_dims, embed_dims]
        self.stem_conv = nn.Conv2d(in_channels, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(widths[0])
        self.stages = nn.ModuleList(
            TokenizerStage(widths[i], widths[i + 1], pool=(i + 1) in pool_stages, make_lif=make_lif,
                           rpe=rpe and i == 3)
            for i in range(4))

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return _split_time(self.stem_bn(self.stem_conv(_merge_time(x))), x.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_stem(x)
        for stage in self.stages:
            x = stage(x)
        return x

    def forward_checkpointed(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` with activations recomputed in backward instead of kept, the same numbers.

        Where the neurons run the fused path, each stage's LIF and pooling (and the stem, with the first) are
        recomputed by :mod:`models.fire_recompute`, which bounds their backward to three tensors of the stage's input
        size, and the stages' conv-BatchNorm by ``torch.utils.checkpoint`` (``models.activation_checkpoint``), except
        two parts that keep their activations because those never add to the step's peak, the backward of the first
        stage's LIF at full resolution: the first stage's conv-BatchNorm (it keeps one tensor half the size of a
        full-resolution one, and its convolution is the costliest of the tokenizer, 0.26 s of an 8-768 step on
        CPU) and the whole last stage (alive only while the blocks run, when the step holds less).
        docs/speed.md has the measurements. With the other neuron paths the stem and each stage but the last are
        plain checkpointed segments."""
        if not torch.is_grad_enabled():
            return self(x)
        first, last = self.stages[0], self.stages[-1]
        if all(fire_recompute.supported(stage.lif, x) for stage in self.stages[:-1]):
            x = first.project(fire_recompute.fire(first, x, stem=self))
            for stage in self.stages[1:-1]:
                x = checkpoint_module(stage, fire_recompute.fire(stage, x), stage.project)
            return last(x)
        x = checkpoint_module(first, checkpoint_module(self, x, self.forward_stem))
        return checkpoint_sequence(self.stages[1:], x, plain_last=1)


def attention_product(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``Q K^T V`` for binary ``[..., N, d]`` operands, in the cheaper order for the shape.

    ``(Q K^T) V`` costs ``N*N*d`` multiply-adds, ``Q (K^T V)`` costs ``N*d*d``. The published ImageNet code uses
    the second order and the CIFAR/DVS code the first; since Q, K and V hold only 0 and 1, every partial sum is an
    integer far below 2^24 and both orders give bit-identical float32 results (and identical results under
    fp16/bf16 autocast too, whose matmuls accumulate in float32 and round only the small-integer output once).
    So the order is a pure speed choice.
    """
    n, d = q.shape[-2], q.shape[-1]
    if n <= d:
        return (q @ k.transpose(-2, -1)) @ v
    return q @ (k.transpose(-2, -1) @ v)


def attention_product_channels_first(q_t: torch.Tensor, k_t: torch.Tensor, v_t: torch.Tensor) -> torch.Tensor:
    """:func:`attention_product` on channel-first operands ``[..., d, N]`` (Q^T, K^T, V^T), returning ``(Q K^T V)^T``.

    ``(Q K^T V)^T = V^T K Q^T``, computed in the cheaper order for the shape: these are the transposes of exactly the
    products :func:`attention_product` forms, so the result is the same in every dtype. The point is the layout: the
    heads come out as ``[..., heads, d, N]``, which is already the channel order of ``[C, N]``, so concatenating the
    heads is a free reshape instead of a transpose copy (and its backward) per block.
    """
    d, n = q_t.shape[-2], q_t.shape[-1]
    if n <= d:
        return v_t @ (k_t.transpose(-2, -1) @ q_t)
    return (v_t @ k_t.transpose(-2, -1)) @ q_t


class SpikingSelfAttention(nn.Module):
    """Spiking self-attention: Q, K, V = LIF(BN(conv1x1(LIF(x)))), ``Q K^T V * 0.125`` without softmax.

    Channel ``c`` belongs to head ``c // (C / heads)``; heads are concatenated back in the same order.

    Options for the Spikformer baseline (defaults: Spikingformer): ``neuron_order='conv_bn_lif'`` drops the input
    LIF (Q, K, V are computed from the block input itself, spike counts there) and puts ``proj_lif`` after
    ``proj_bn``; ``linear=True`` builds ``nn.Linear`` layers with biases (``q_linear``, ``k_linear``, ``v_linear``,
    ``proj_linear``, as the published CIFAR file) instead of bias-free 1x1 ``Conv1d`` (``q_conv``, ...; ``proj_conv``
    has a bias); ``scale`` is the fixed attention scale (0.25 in Spikformer's CIFAR10-DVS file).
    """

    def __init__(self, dim: int, num_heads: int, make_lif: MakeLIF, neuron_order: str = 'lif_conv_bn',
                 linear: bool = False, scale: float = ATTENTION_SCALE):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'embed_dims {dim} is not divisible by num_heads {num_heads}')
        self.num_heads = num_heads
        self.neuron_order = _check_order(neuron_order)
        self.scale = scale
        self.kind = 'linear' if linear else 'conv'

        def layer(bias: bool) -> nn.Module:
            if linear:
                return nn.Linear(dim, dim)
            return nn.Conv1d(dim, dim, kernel_size=1, stride=1, bias=bias)

        lif_first = neuron_order == 'lif_conv_bn'
        if lif_first:
            self.proj_lif = make_lif()
        for role in ('q', 'k', 'v'):
            setattr(self, f'{role}_{self.kind}', layer(bias=False))
            setattr(self, f'{role}_bn', nn.BatchNorm1d(dim))
            setattr(self, f'{role}_lif', make_lif())
        self.attn_lif = make_lif(v_threshold=0.5)
        setattr(self, f'proj_{self.kind}', layer(bias=True))
        self.proj_bn = nn.BatchNorm1d(dim)
        if not lif_first:
            self.proj_lif = make_lif()

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[T, B, C, N]`` -> ``[T, B, heads, C/heads, N]`` (channel-first per head: a view, no copy)."""
        T, B, C, N = x.shape
        return x.reshape(T, B, self.num_heads, C // self.num_heads, N)

    def _qkv(self, role: str, s: torch.Tensor, T: int) -> torch.Tensor:
        """LIF(BN(layer(s))) for role 'q', 'k' or 'v', split into heads."""
        out = getattr(self, f'{role}_bn')(_pointwise(getattr(self, f'{role}_{self.kind}'), s))
        return self._heads(getattr(self, f'{role}_lif')(_split_time(out, T)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, B, C, H, W = x.shape
        lif_first = self.neuron_order == 'lif_conv_bn'
        s = _merge_time((self.proj_lif(x) if lif_first else x).flatten(3))  # [T*B, C, N]
        q, k, v = self._qkv('q', s, T), self._qkv('k', s, T), self._qkv('v', s, T)
        # (Q K^T V)^T per head, [T, B, heads, d, N]: its reshape to [T, B, C, N] concatenates the heads for free
        out = attention_product_channels_first(q, k, v).mul_(self.scale)
        out = self.attn_lif(out.reshape(T, B, C, H * W))
        out = _split_time(self.proj_bn(_pointwise(getattr(self, f'proj_{self.kind}'), _merge_time(out))), T)
        if not lif_first:
            out = self.proj_lif(out)
        return out.reshape(T, B, C, H, W)


class MLP(nn.Module):
    """LIF -> conv1x1 -> BN -> LIF -> conv1x1 -> BN.

    Options for the Spikformer baseline (defaults: Spikingformer): ``neuron_order='conv_bn_lif'`` gives
    conv1x1 -> BN -> LIF -> conv1x1 -> BN -> LIF (the same two neurons, ``mlp1_lif`` after the first BatchNorm and
    ``mlp2_lif`` after the second; the published Spikformer names are ``fc1_*``/``fc2_*``, mapped by the checkpoint
    filter); ``linear=True`` builds ``nn.Linear`` layers (``mlp1_linear``, ``mlp2_linear``) with ``BatchNorm1d`` over
    channels, as the published Spikformer CIFAR file.
    """

    def __init__(self, dim: int, hidden_dim: int, make_lif: MakeLIF, neuron_order: str = 'lif_conv_bn',
                 linear: bool = False):
        super().__init__()
        self.neuron_order = _check_order(neuron_order)
        self.kind = 'linear' if linear else 'conv'
        lif_first = neuron_order == 'lif_conv_bn'
        for i, (cin, cout) in enumerate(((dim, hidden_dim), (hidden_dim, dim)), start=1):  # in execution order
            if lif_first:
                setattr(self, f'mlp{i}_lif', make_lif())
            setattr(self, f'mlp{i}_{self.kind}', nn.Linear(cin, cout) if linear else
                    nn.Conv2d(cin, cout, kernel_size=1, stride=1))
            setattr(self, f'mlp{i}_bn', nn.BatchNorm1d(cout) if linear else nn.BatchNorm2d(cout))
            if not lif_first:
                setattr(self, f'mlp{i}_lif', make_lif())

    def _layer(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """BN(layer(x)) of stage ``i`` on ``[T, B, C, H, W]``."""
        T, B, _, H, W = x.shape
        layer, bn = getattr(self, f'mlp{i}_{self.kind}'), getattr(self, f'mlp{i}_bn')
        if self.kind == 'linear':
            out = bn(_pointwise(layer, _merge_time(x).flatten(2)))
            return out.reshape(T, B, -1, H, W)
        return _split_time(bn(layer(_merge_time(x))), T)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.neuron_order == 'conv_bn_lif':
            x = self.mlp1_lif(self._layer(1, x))
            return self.mlp2_lif(self._layer(2, x))
        if self.kind == 'conv':  # the Spikingformer path as it always ran
            T = x.shape[0]
            x = _split_time(self.mlp1_bn(self.mlp1_conv(_merge_time(self.mlp1_lif(x)))), T)
            return _split_time(self.mlp2_bn(self.mlp2_conv(_merge_time(self.mlp2_lif(x)))), T)
        x = self._layer(1, self.mlp1_lif(x))
        return self._layer(2, self.mlp2_lif(x))


class EncoderBlock(nn.Module):
    """``x = x + attn(x); x = x + mlp(x)``.

    The published block also builds ``norm1``/``norm2`` LayerNorms and a ``drop_path`` that its forward never
    uses; they are not built here (dead parameters would force ``find_unused_parameters`` under DDP), and the
    checkpoint filter drops their tensors from published checkpoints. ``neuron_order``, ``linear`` and ``scale`` are
    passed to :class:`SpikingSelfAttention` and :class:`MLP` (the Spikformer baseline's options).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, make_lif: MakeLIF,
                 neuron_order: str = 'lif_conv_bn', linear: bool = False, scale: float = ATTENTION_SCALE):
        super().__init__()
        self.attn = SpikingSelfAttention(dim, num_heads, make_lif, neuron_order=neuron_order, linear=linear,
                                         scale=scale)
        self.mlp = MLP(dim, int(dim * mlp_ratio), make_lif, neuron_order=neuron_order, linear=linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)
        return x + self.mlp(x)
