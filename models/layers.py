"""Building blocks of Spikingformer (SPEC section 2): tokenizer, spiking self-attention, MLP, encoder block.

Every activation is time-first ``[T, B, ...]``. Convolutions and BatchNorm run on ``[T*B, ...]`` (time merged
into the batch) and are reshaped back. Each branch starts with a LIF, so every convolution inside the encoder
blocks sees binary spikes, while the residual stream carries real-valued BatchNorm outputs ("spike-driven
residual"). Parameter names inside the blocks are the published ones; the tokenizer uses one naming for both
published layouts, and :func:`models.checkpoint_filter_fn` maps the published names onto it.
"""
from typing import Callable, Sequence

import torch
from torch import nn

from .activation_checkpoint import checkpoint_module, checkpoint_sequence

MakeLIF = Callable[..., nn.Module]

# Fixed attention scale of the published model (inherited from Spikformer), not 1/sqrt(head_dim): Q, K and V are
# binary, so there is no softmax to keep in range, and a power of two multiplies exactly in every dtype.
ATTENTION_SCALE = 0.125


def _merge_time(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(0, 1)


def _split_time(x: torch.Tensor, T: int) -> torch.Tensor:
    return x.reshape(T, x.shape[0] // T, *x.shape[1:])


class TokenizerStage(nn.Module):
    """LIF -> (max pool 3x3/2) -> conv 3x3 -> BatchNorm."""

    def __init__(self, in_channels: int, out_channels: int, pool: bool, make_lif: MakeLIF):
        super().__init__()
        self.lif = make_lif()
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if pool else nn.Identity()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[0]
        x = self.pool(_merge_time(self.lif(x)))
        return _split_time(self.bn(self.conv(x)), T)


class SpikingTokenizer(nn.Module):
    """Convolutional tokenizer: conv-BN on the raw input, then four LIF-(pool)-conv-BN stages.

    Channel widths: in -> C/8 -> C/4 -> C/2 -> C -> C. The two published layouts differ only in which stages pool:
    ImageNet and DVS pool in stages 1-4 (patch size 16), CIFAR in stages 3-4 (patch size 4). The first convolution
    sees the raw image or event counts, not spikes (it is the one layer counted as MACs in the energy estimate).
    Spatial sizes are computed from the input, not hard-coded.
    """

    def __init__(self, in_channels: int, embed_dims: int, pool_stages: Sequence[int], make_lif: MakeLIF):
        super().__init__()
        widths = [embed_dims // 8, embed_dims // 4, embed_dims // 2, embed_dims, embed_dims]
        self.stem_conv = nn.Conv2d(in_channels, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(widths[0])
        self.stages = nn.ModuleList(
            TokenizerStage(widths[i], widths[i + 1], pool=(i + 1) in pool_stages, make_lif=make_lif)
            for i in range(4))

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return _split_time(self.stem_bn(self.stem_conv(_merge_time(x))), x.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_stem(x)
        for stage in self.stages:
            x = stage(x)
        return x

    def forward_checkpointed(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` with the stem and each stage recomputed in backward (``models.activation_checkpoint``)."""
        if not torch.is_grad_enabled():
            return self(x)
        x = checkpoint_module(self, x, self.forward_stem)
        return checkpoint_sequence(self.stages, x)


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
    """

    def __init__(self, dim: int, num_heads: int, make_lif: MakeLIF):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'embed_dims {dim} is not divisible by num_heads {num_heads}')
        self.num_heads = num_heads
        self.proj_lif = make_lif()
        self.q_conv = nn.Conv1d(dim, dim, kernel_size=1, stride=1, bias=False)
        self.q_bn = nn.BatchNorm1d(dim)
        self.q_lif = make_lif()
        self.k_conv = nn.Conv1d(dim, dim, kernel_size=1, stride=1, bias=False)
        self.k_bn = nn.BatchNorm1d(dim)
        self.k_lif = make_lif()
        self.v_conv = nn.Conv1d(dim, dim, kernel_size=1, stride=1, bias=False)
        self.v_bn = nn.BatchNorm1d(dim)
        self.v_lif = make_lif()
        self.attn_lif = make_lif(v_threshold=0.5)
        self.proj_conv = nn.Conv1d(dim, dim, kernel_size=1, stride=1)
        self.proj_bn = nn.BatchNorm1d(dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[T, B, C, N]`` -> ``[T, B, heads, C/heads, N]`` (channel-first per head: a view, no copy)."""
        T, B, C, N = x.shape
        return x.reshape(T, B, self.num_heads, C // self.num_heads, N)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, B, C, H, W = x.shape
        s = _merge_time(self.proj_lif(x).flatten(3))  # [T*B, C, N] spikes
        q = self._heads(self.q_lif(_split_time(self.q_bn(self.q_conv(s)), T)))
        k = self._heads(self.k_lif(_split_time(self.k_bn(self.k_conv(s)), T)))
        v = self._heads(self.v_lif(_split_time(self.v_bn(self.v_conv(s)), T)))
        # (Q K^T V)^T per head, [T, B, heads, d, N]: its reshape to [T, B, C, N] concatenates the heads for free
        out = attention_product_channels_first(q, k, v).mul_(ATTENTION_SCALE)
        out = self.attn_lif(out.reshape(T, B, C, H * W))
        out = self.proj_bn(self.proj_conv(_merge_time(out)))
        return out.reshape(T, B, C, H, W)


class MLP(nn.Module):
    """LIF -> conv1x1 -> BN -> LIF -> conv1x1 -> BN."""

    def __init__(self, dim: int, hidden_dim: int, make_lif: MakeLIF):
        super().__init__()
        self.mlp1_lif = make_lif()
        self.mlp1_conv = nn.Conv2d(dim, hidden_dim, kernel_size=1, stride=1)
        self.mlp1_bn = nn.BatchNorm2d(hidden_dim)
        self.mlp2_lif = make_lif()
        self.mlp2_conv = nn.Conv2d(hidden_dim, dim, kernel_size=1, stride=1)
        self.mlp2_bn = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[0]
        x = _split_time(self.mlp1_bn(self.mlp1_conv(_merge_time(self.mlp1_lif(x)))), T)
        return _split_time(self.mlp2_bn(self.mlp2_conv(_merge_time(self.mlp2_lif(x)))), T)


class EncoderBlock(nn.Module):
    """``x = x + attn(x); x = x + mlp(x)``.

    The published block also builds ``norm1``/``norm2`` LayerNorms and a ``drop_path`` that its forward never
    uses; they are not built here (dead parameters would force ``find_unused_parameters`` under DDP), and the
    checkpoint filter drops their tensors from published checkpoints.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, make_lif: MakeLIF):
        super().__init__()
        self.attn = SpikingSelfAttention(dim, num_heads, make_lif)
        self.mlp = MLP(dim, int(dim * mlp_ratio), make_lif)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)
        return x + self.mlp(x)
