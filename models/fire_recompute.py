"""A tokenizer stage's LIF and max pooling (for the first stage, with the stem before them) recomputed in backward,
with at most three tensors of the stage's input size alive at once: the part of ``--grad-checkpointing`` that decides
its peak memory.

Why its own autograd function and not ``torch.utils.checkpoint`` (which :mod:`models.activation_checkpoint` uses for
the convolutions and the blocks). The tokenizer's first stage runs at full resolution, 224x224 with ``C/8`` channels for
ImageNet, so each of its tensors is ``T*B*C/8*224*224`` floats (147 MiB for 8-768 at batch 2, T=4), and everything
after it is a quarter of that or less. Checkpointed as plain segments, its backward held the segment input, the LIF's
potentials, the spikes, the pooling indices and two gradients at once, on top of the weight gradients: the peak of
the checkpointed step (docs/speed.md). Here the backward runs the same operations in an order that frees each tensor
as soon as it is last used:

1. recompute the LIF's input (for the first stage: the stem, conv and BatchNorm, without a graph; for the others: a
   copy of the saved input) and turn it into the LIF's potentials in place (``lif_forward(z, h_seq=z)``); recompute
   the spikes and the pooling indices, free the spikes;
2. the pooling's backward scatters the incoming gradient through those indices (the kernel autograd calls, which reads
   only the indices); the LIF's backward runs in place over the potentials and that gradient
   (``lif_backward(..., overwrite=True)``);
3. first stage only: recompute the stem once more, now with a graph, free its output's storage (the backward of
   conv-BatchNorm reads BatchNorm's saved input, never its output) and let autograd compute the stem's gradients.

Steps 1-2 replace autograd for the LIF and the pool with the calls autograd makes for them (the fused LIF's own
backward, ``max_pool2d_with_indices_backward``); step 3 is autograd itself, so the conv and BatchNorm backward, their
kernels on every device and the dtype casts of autocast are those of the plain model. The result is the plain model's,
bit for bit on CPU (tests/test_fire_recompute.py); the stem's BatchNorm statistics are updated once, by the forward
(the recomputations run under :func:`models.activation_checkpoint.running_stats_kept`). The forward keeps only the
input (for the first stage the image, a 32nd of the stem's output for 8-768).

Only for the ``fused`` neuron path (what ``auto`` picks on CPU and on CUDA without CuPy): its backward is the function
called here. With the ``torch`` or ``cupy`` neuron paths :class:`models.layers.SpikingTokenizer` checkpoints the
stages with ``torch.utils.checkpoint`` instead (same numbers, more memory).
"""
import contextlib
from typing import List, Optional

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.modules.utils import _pair

from .activation_checkpoint import running_stats_kept
from .fused_lif import charge_input, lif_backward, lif_forward
from .neuron import LIF, resolve_backend


def supported(lif: nn.Module, x: torch.Tensor) -> bool:
    """Whether :func:`fire` can run ``lif`` for input ``x`` (or for the output of a stem run on ``x``): a
    :class:`models.neuron.LIF` that resolves to the fused path for the dtype it will see (autocast's, if on)."""
    if not isinstance(lif, LIF):
        return False
    device = x.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
    return resolve_backend(lif.requested_backend, x.new_empty(0, dtype=dtype)) == 'fused'


def _pool_arguments(pool: nn.MaxPool2d) -> list:
    """kernel, stride, padding, dilation as ``max_pool2d_with_indices(_backward)`` take them."""
    return [list(_pair(pool.kernel_size)), list(_pair(pool.stride if pool.stride is not None else pool.kernel_size)),
            list(_pair(pool.padding)), list(_pair(pool.dilation))]


def _autocast_state(device: str) -> tuple:
    return device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)


def _autocast(state: tuple):
    device, enabled, dtype = state
    return torch.autocast(device, dtype=dtype, enabled=enabled)


def _split_time(x: torch.Tensor, T: int) -> torch.Tensor:
    return x.reshape(T, x.shape[0] // T, *x.shape[1:])


class _Fire(torch.autograd.Function):
    """``[T, B, C, H, W]`` -> the stage's pooled spikes; saves only its input (see the module doc).

    ``stem``: the tokenizer, whose ``forward_stem`` runs before the LIF (first stage), or None; ``params``: the stem's
    parameters (so that autograd hands their gradients to the optimizer, and to DDP's hooks, as for any layer)."""

    @staticmethod
    def forward(ctx, x, stage, stem, *params):
        ctx.stage, ctx.stem = stage, stem
        ctx.autocast = _autocast_state(x.device.type)
        ctx.save_for_backward(x)
        z = stem.forward_stem(x) if stem is not None else x  # the one update of the stem's BatchNorm statistics
        if resolve_backend(stage.lif.requested_backend, z) != 'fused':  # supported() guessed wrong
            raise RuntimeError(f'models.fire_recompute runs the fused neuron path only, not for {z.dtype} on '
                               f'{z.device}')
        spikes = lif_forward(charge_input(z), stage.lif.tau, stage.lif.v_threshold)
        del z
        return _split_time(stage.pool(spikes.flatten(0, 1)), x.shape[0])

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        stage, stem, lif = ctx.stage, ctx.stem, ctx.stage.lif
        kept = running_stats_kept(stem.stem_bn) if stem is not None else contextlib.nullcontext()
        with torch.no_grad(), _autocast(ctx.autocast), kept:
            z = stem.forward_stem(x) if stem is not None else x
            z_dtype = z.dtype
            h = charge_input(z)
            if h is x:  # the saved input itself: the potentials must not overwrite it
                h = h.clone()
            del z
            spikes = lif_forward(h, lif.tau, lif.v_threshold, h_seq=h)  # h: the input, now the potentials
            if isinstance(stage.pool, nn.MaxPool2d):
                pool = stage.pool
                kernel, stride, padding, dilation = _pool_arguments(pool)
                _, indices = F.max_pool2d(spikes.flatten(0, 1), kernel, stride, padding, dilation=dilation,
                                          ceil_mode=pool.ceil_mode, return_indices=True)
                del spikes, _
                # the kernel autograd's MaxPool2DWithIndicesBackward0 calls; the input only lends its shape and dtype
                grad_spikes = torch.ops.aten.max_pool2d_with_indices_backward(
                    grad_out.flatten(0, 1).to(h.dtype), h.flatten(0, 1), kernel, stride, padding, dilation,
                    pool.ceil_mode, indices).reshape(h.shape)
                del indices
            else:  # no pooling in this stage: the incoming gradient is autograd's, so work on a copy
                del spikes
                grad_spikes = grad_out.to(h.dtype, copy=True)
            grad_z = lif_backward(grad_spikes, h, lif.tau, lif.v_threshold, lif.surrogate_function.alpha,
                                  overwrite=True)
            del h, grad_spikes
            grad_z = grad_z.to(z_dtype)  # the backward of charge_input's upcast, as autograd's
        if stem is None:
            return grad_z, None, None
        x_leaf = x.detach().requires_grad_(ctx.needs_input_grad[0])
        params = stem_parameters(stem)
        inputs = [t for t in (x_leaf, *params) if t.requires_grad]
        grads = {}
        if inputs:
            with torch.enable_grad(), _autocast(ctx.autocast), running_stats_kept(stem.stem_bn):
                z = stem.forward_stem(x_leaf)
                z.untyped_storage().resize_(0)  # the backward of conv-BN reads BatchNorm's saved input, not z
                grads = dict(zip(map(id, inputs), torch.autograd.grad(z, inputs, grad_z)))
        return (grads.get(id(x_leaf)), None, None, *[grads.get(id(p)) for p in params])


def stem_parameters(tokenizer: nn.Module) -> List[nn.Parameter]:
    """The parameters the first stage's :func:`fire` differentiates: the stem's convolution and BatchNorm (the LIF and
    the pool have none)."""
    return [p for m in (tokenizer.stem_conv, tokenizer.stem_bn) for p in m.parameters()]


def fire(stage: nn.Module, x: torch.Tensor, stem: Optional[nn.Module] = None) -> torch.Tensor:
    """``stage.fire(x)``, or ``stage.fire(stem.forward_stem(x))`` with ``stem`` (the tokenizer), with the memory of
    its backward bounded as the module doc says; call only where :func:`supported` is true and gradients are
    recorded."""
    params = stem_parameters(stem) if stem is not None else []
    return _Fire.apply(x, stage, stem, *params)
