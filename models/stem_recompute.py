"""The tokenizer's full-resolution front (stem conv-BN, the first LIF, the first max pool) recomputed in backward with
at most three full-resolution tensors alive at once: the part of ``--grad-checkpointing`` that decides its peak.

Why its own autograd function and not ``torch.utils.checkpoint`` (which :mod:`models.activation_checkpoint` uses for
every other segment). At ImageNet size the front runs at 224x224 with ``C/8`` channels, so each of its tensors is
``T*B*C/8*224*224`` floats (147 MiB for 8-768 at batch 2, T=4) while everything after it is a quarter of that or less.
Checkpointed as plain segments, the front's backward holds the segment input, the LIF's potentials, the spikes, the
pooling indices and two gradients at once, on top of the weight gradients: that was the peak of the checkpointed
step (docs/speed.md). Here the backward runs the same operations in an order that frees each tensor as soon as it is
last used:

1. recompute the stem (conv, BatchNorm) without a graph; its output ``z`` becomes the LIF's potentials in place
   (``lif_forward(z, h_seq=z)``); recompute the spikes and the pooling indices, free the spikes;
2. the pooling's backward scatters the incoming gradient through those indices (the same kernel autograd calls, which
   reads only the indices); the LIF's backward runs in place over the potentials and that gradient
   (``lif_backward(..., overwrite=True)``);
3. recompute the stem once more, this time with a graph, free its output's storage (the BatchNorm backward reads its
   saved input, never its output) and let autograd compute the stem's gradients from the LIF's input gradient.

Steps 1-2 replace autograd for the LIF and the pool with the calls autograd makes for them (the fused LIF's own
backward, ``max_pool2d_with_indices_backward``); step 3 is autograd itself, so the conv and BatchNorm backward, their
kernels on every device and the dtype casts of autocast are exactly those of the plain model. The result is the plain
model's gradient bit for bit on CPU (tests/test_stem_recompute.py); the BatchNorm running statistics are updated once,
by the forward (the recomputations run under :func:`models.activation_checkpoint.running_stats_kept`).

Only for the ``fused`` neuron path (what ``auto`` picks on CPU and on CUDA without CuPy): its backward is the function
called here. With the ``torch`` or ``cupy`` neuron paths :class:`models.layers.SpikingTokenizer` checkpoints the front
with ``torch.utils.checkpoint`` instead (same numbers, more memory).
"""
from typing import List

import torch
from torch.nn import functional as F
from torch.nn.modules.utils import _pair

from .activation_checkpoint import running_stats_kept
from .fused_lif import charge_input, lif_backward, lif_forward
from .neuron import LIF, resolve_backend


def supported(tokenizer, x: torch.Tensor) -> bool:
    """Whether :func:`front` can run the first stage's neuron of ``tokenizer`` for the model input ``x``: a
    :class:`models.neuron.LIF` that resolves to the fused path for the dtype the stem hands it (autocast's if on)."""
    lif = tokenizer.stages[0].lif
    if not isinstance(lif, LIF):
        return False
    device = x.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
    return resolve_backend(lif.requested_backend, x.new_empty(0, dtype=dtype)) == 'fused'


def _pool_arguments(pool) -> List[list]:
    return [list(_pair(pool.kernel_size)), list(_pair(pool.stride if pool.stride is not None else pool.kernel_size)),
            list(_pair(pool.padding)), list(_pair(pool.dilation))]


def _autocast_state(device: str) -> tuple:
    return device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)


def _autocast(state: tuple):
    device, enabled, dtype = state
    return torch.autocast(device, dtype=dtype, enabled=enabled)


def _spikes(tokenizer, z: torch.Tensor, keep_potentials: bool):
    """The first LIF on the stem output ``z``: (spikes, potentials or None). With ``keep_potentials`` the potentials
    are written over ``z`` (or over its float32 copy under autocast), which the caller must own."""
    lif = tokenizer.stages[0].lif
    xs = charge_input(z)
    spikes = lif_forward(xs, lif.tau, lif.v_threshold, h_seq=xs if keep_potentials else None)
    return spikes, (xs if keep_potentials else None)


class _Front(torch.autograd.Function):
    """Model input ``[T, B, C, H, W]`` -> pooled spikes of the first stage; saves only the input."""

    @staticmethod
    def forward(ctx, x, tokenizer, *params):
        ctx.tokenizer = tokenizer
        ctx.autocast = _autocast_state(x.device.type)
        ctx.save_for_backward(x)
        z = tokenizer.forward_stem(x)  # the one update of the stem's BatchNorm statistics
        if resolve_backend(tokenizer.stages[0].lif.requested_backend, z) != 'fused':  # supported() guessed wrong
            raise RuntimeError(f'models.stem_recompute runs the fused neuron path only, not for {z.dtype} on '
                               f'{z.device}')
        spikes, _ = _spikes(tokenizer, z, keep_potentials=False)
        del z
        pooled = tokenizer.stages[0].pool(spikes.flatten(0, 1))
        return pooled.reshape(x.shape[0], pooled.shape[0] // x.shape[0], *pooled.shape[1:])

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        tokenizer = ctx.tokenizer
        stage, lif = tokenizer.stages[0], tokenizer.stages[0].lif
        with torch.no_grad(), _autocast(ctx.autocast), running_stats_kept(tokenizer.stem_bn):
            z = tokenizer.forward_stem(x)
            z_dtype = z.dtype
            spikes, h = _spikes(tokenizer, z, keep_potentials=True)
            del z  # its storage now holds the potentials h (float32: its upcast copy under autocast)
            if isinstance(stage.pool, torch.nn.MaxPool2d):
                pool = stage.pool
                _, indices = F.max_pool2d(spikes.flatten(0, 1), *_pool_arguments(pool)[:3],
                                          dilation=_pool_arguments(pool)[3], ceil_mode=pool.ceil_mode,
                                          return_indices=True)
                del spikes, _
                # the kernel autograd's MaxPool2DWithIndicesBackward0 calls; the input only lends its shape and dtype
                grad_spikes = torch.ops.aten.max_pool2d_with_indices_backward(
                    grad_out.flatten(0, 1).to(h.dtype), h.flatten(0, 1), *_pool_arguments(pool), pool.ceil_mode,
                    indices).reshape(h.shape)
                del indices
            else:  # no pooling in the first stage (CIFAR layout): the gradient is autograd's, so copy it
                del spikes
                grad_spikes = grad_out.to(h.dtype, copy=True)
            grad_z = lif_backward(grad_spikes, h, lif.tau, lif.v_threshold, lif.surrogate_function.alpha,
                                  overwrite=True)
            del h, grad_spikes
            grad_z = grad_z.to(z_dtype)  # the backward of charge_input's upcast, as autograd's
        x_leaf = x.detach().requires_grad_(ctx.needs_input_grad[0])
        params = tokenizer_params(tokenizer)
        inputs = [t for t in (x_leaf, *params) if t.requires_grad]
        grads = {}
        if inputs:
            with torch.enable_grad(), _autocast(ctx.autocast), running_stats_kept(tokenizer.stem_bn):
                z = tokenizer.forward_stem(x_leaf)
                z.untyped_storage().resize_(0)  # the backward of conv-BN reads BatchNorm's saved input, not z
                grads = dict(zip(map(id, inputs), torch.autograd.grad(z, inputs, grad_z)))
        return (grads.get(id(x_leaf)), None, *[grads.get(id(p)) for p in params])


def tokenizer_params(tokenizer) -> List[torch.nn.Parameter]:
    """The parameters :func:`front` differentiates: the stem's convolution and BatchNorm (the LIF and the pool have
    none)."""
    return [p for m in (tokenizer.stem_conv, tokenizer.stem_bn) for p in m.parameters()]


def front(tokenizer, x: torch.Tensor) -> torch.Tensor:
    """``tokenizer.stages[0].fire(tokenizer.forward_stem(x))`` with the memory of its backward bounded as the module
    doc says; call only where :func:`supported` is true and gradients are recorded."""
    return _Front.apply(x, tokenizer, *tokenizer_params(tokenizer))
