"""The ``fused`` LIF backend: the LIF of docs/recipe.md section 1 as one autograd node with a hand-written backward.

Why a custom :class:`torch.autograd.Function` instead of SpikingJelly's ``torch`` backend: that backend builds the
recurrence out of single-step calls, so autograd records about a dozen nodes per time step and keeps several
``[N]`` tensors per step alive for the backward (``h - v_th`` for the surrogate, the spike and ``v`` for the reset
product, ...); its ``x_seq[t]`` indexing even costs, in the backward, one zero-filled ``[T, N]`` tensor per step
(``SelectBackward``) and a ``torch.stack`` copy on the way out. Here the forward runs the same arithmetic with
in-place and ``out=`` operations into preallocated ``[T, N]`` buffers and saves a single tensor, the charged
potential ``h_seq``; the backward recomputes the surrogate and the reset mask from it, and runs the backward
recurrence in place, one fused multiply-add per step.

Numerics, forward: the roundings, their order and their dtype are those of the ``torch`` backend, so spikes and
potentials are bit-identical to it on every device and in every dtype:

* charge ``h_t = v_{t-1} + (x_t - v_{t-1}) / tau``: a subtraction, a *division* by ``tau`` (never a multiplication by
  ``1/tau``, which rounds differently for tau = 1.5) and an addition, each rounded in the input's dtype (in float32
  the division and the addition run as one ``addcdiv``, which rounds both the same way). For ``t = 1``, ``v_0 = 0``
  makes it ``x_1 / tau`` exactly, one operation instead of three.
* fire ``s_t = (h_t >= v_th)``, which equals SpikingJelly's ``heaviside(h_t - v_th)`` exactly (with gradual underflow
  ``a - b >= 0`` if and only if ``a >= b``).
* hard reset to 0 ``v_t = h_t - h_t * s_t``: ``h_t`` where ``s_t = 0`` and exactly ``+0`` where ``s_t = 1``, as
  SpikingJelly's ``(1 - s_t) * h_t + s_t * 0``.

Dtypes. Under autocast the neuron receives the half-precision output of the conv/BatchNorm before it, and the
``torch`` backend's TorchScript charge function, run under autocast, returns float32: from there its whole recurrence
and its spikes are float32. The fused path does the same explicitly: under an active autocast a float16/bfloat16 input
is upcast to float32 first, so the recurrence runs in float32 and the spikes (float32, 0/1) are those of the ``torch``
backend (in training; in inference the spikes take the input's dtype, as in the ``torch`` backend's eval kernel).
Outside autocast (a model cast to bfloat16 as a whole, say) both run the recurrence op by op in the input's
dtype, again with identical spikes. The backward always runs in float32 for float16/bfloat16 inputs (``h_seq`` and
the incoming gradient are upcast exactly) and rounds only the final input gradient to the input dtype, which is at
least as accurate as the ``torch`` backend's op-by-op half-precision backward.

Numerics, backward (SpikingJelly's graph with ``detach_reset``): ``g_h_t = g_s_t * sg'(h_t - v_th) + g_v_t * (1 - s_t)``
with ``sg'(u) = alpha * sig(alpha u) (1 - sig(alpha u))``, ``g_v_{t-1} = g_h_t * (1 - 1/tau)``, ``g_x_t = g_h_t / tau``
and ``g_v_T = 0`` (the final potential is not an output). It differs from the autograd graph of the ``torch`` backend
only in float rounding (a few ulp; bit-identical for tau = 2 up to the order of the surrogate's products).

Why not ``torch.compile`` (or a C++ extension) for one kernel per device: both fuse the per-step operations into
one pass over memory and would be faster still, but they need a working compiler toolchain at run time, add seconds
to a minute of compilation to the first call of each new shape (and to every test run in a fresh environment), and
inductor's CPU code generation is free to reorder the arithmetic. The eager version is exact by construction and
runs anywhere; see ``scripts/benchmark.py`` for what it gains.
"""
import math
from typing import Optional

import torch

_REDUCED = (torch.float16, torch.bfloat16)


def _divisor(tau: float, x: torch.Tensor):
    """``tau`` in the form that makes ``x / tau`` a true, correctly rounded division on ``x``'s device.

    On CPU a Python float does. CUDA turns division by a CPU scalar into a multiplication by its reciprocal (one bit
    less exact, and for tau = 1.5 able to flip a spike at the threshold, docs/recipe.md section 1), so there the
    divisor is a 0-dim tensor on the device, which takes the true-division kernel.
    """
    if x.device.type == 'cpu':
        return tau
    return torch.tensor(tau, dtype=torch.float32, device=x.device)


def lif_forward(x_seq: torch.Tensor, tau: float, v_threshold: float, h_seq: Optional[torch.Tensor] = None,
                spike_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Spikes ``[T, ...]`` of a LIF starting from ``v = 0``; writes the charged potentials into ``h_seq`` if given.

    No autograd: this is the arithmetic shared by the training forward and inference. The spikes have the dtype of
    ``x_seq`` unless ``spike_dtype`` says otherwise. ``h_seq`` may be ``x_seq`` itself: each step reads ``x_t`` before
    it writes ``h_t`` in its place, so the potentials then replace the input without a second ``[T, N]`` buffer.
    """
    T = x_seq.shape[0]
    spikes = torch.empty_like(x_seq, dtype=spike_dtype)
    if T == 0:
        return spikes
    divisor = _divisor(tau, x_seq)
    # addcdiv(v, d, tau) = v + d / tau rounds d / tau and the sum separately in float32/float64 (a division cannot be
    # contracted into a fused multiply-add), so it is exact there; for float16/bfloat16 it keeps d / tau in float32
    # and rounds once, which is not what the torch backend does, so those dtypes take the separate operations.
    fused_charge = x_seq.dtype in (torch.float32, torch.float64)
    divisor_t = torch.tensor(tau, dtype=x_seq.dtype, device=x_seq.device) if fused_charge else None
    v = None
    h_tmp = None
    for t in range(T):
        h = h_seq[t] if h_seq is not None else (h_tmp if h_tmp is not None else torch.empty_like(x_seq[0]))
        if t == 0:  # v_0 = 0: 0 + (x - 0) / tau == x / tau exactly
            torch.div(x_seq[0], divisor, out=h)
        else:
            torch.sub(x_seq[t], v, out=h)
            if fused_charge:  # v + (x - v) / tau in one pass, rounded exactly as the two operations it replaces
                torch.addcdiv(v, h, divisor_t, out=h)
            else:
                h.div_(divisor)
                h.add_(v)  # (x - v) / tau + v == v + (x - v) / tau: addition is commutative in IEEE arithmetic
        torch.ge(h, v_threshold, out=spikes[t])
        if t + 1 < T:
            if v is None:
                v = torch.empty_like(h)
            torch.addcmul(h, h, spikes[t], value=-1., out=v)  # h - h*s: h, or exactly +0 where the neuron fired
        if h_seq is None:
            h_tmp = h
    return spikes


def lif_backward(grad_spikes: torch.Tensor, h_seq: torch.Tensor, tau: float, v_threshold: float,
                 alpha: float, overwrite: bool = False) -> torch.Tensor:
    """Gradient with respect to the input of :func:`lif_forward`, from the saved charged potentials ``h_seq``.

    ``overwrite=True`` (for a caller that owns both tensors, :mod:`models.fire_recompute`): ``h_seq`` and
    ``grad_spikes`` are overwritten, the result is written into ``grad_spikes`` and the reset mask is kept as bool, so
    the backward allocates only that mask (a quarter of ``[T-1, N]`` floats) instead of two ``[T, N]`` temporaries.
    The same operations on the same values: the result is bit for bit the one without (tests/test_fire_recompute.py).
    """
    out_dtype = grad_spikes.dtype
    if h_seq.dtype in _REDUCED:
        h_seq = h_seq.float()
    grad_spikes = grad_spikes.to(h_seq.dtype)
    T = h_seq.shape[0]
    # surrogate: g_s * alpha * sig(alpha u) * (1 - sig(alpha u)), u = h - v_th
    if overwrite:
        not_fired = torch.lt(h_seq[:T - 1], v_threshold)  # bool, taken before h_seq becomes the surrogate
        sg = h_seq.sub_(v_threshold).mul_(alpha).sigmoid_()
        grad = torch.ops.aten.sigmoid_backward.grad_input(grad_spikes, sg, grad_input=grad_spikes)
    else:
        sg = torch.sub(h_seq, v_threshold).mul_(alpha).sigmoid_()
        grad = torch.ops.aten.sigmoid_backward(grad_spikes, sg)  # g_s * (1 - sig) * sig, still to be scaled by alpha
    # With alpha a power of two (docs/recipe.md section 1: 4) the recurrence below can run on g_h / alpha, which is
    # g_h scaled exactly, and the final g_h / tau becomes one division by tau / alpha: one pass over [T, N] less, same
    # roundings.
    exact_scale = math.frexp(alpha)[0] == 0.5
    if not exact_scale:
        grad.mul_(alpha)
    # reset path: g_h_t += g_h_{t+1} * (1 - 1/tau) * (1 - s_t), backwards in time, in place
    if not overwrite:
        not_fired = torch.lt(h_seq[:T - 1], v_threshold, out=sg[:T - 1])
    decay = 1. - 1. / tau
    for t in range(T - 2, -1, -1):
        grad[t].addcmul_(grad[t + 1], not_fired[t], value=decay)
    grad.div_(tau / alpha if exact_scale else tau)  # g_x = g_h / tau
    return grad if grad.dtype == out_dtype else grad.to(out_dtype)


class LIFFunction(torch.autograd.Function):
    """Multi-step LIF with hard reset to 0, detached reset and sigmoid surrogate; saves only ``h_seq``."""

    @staticmethod
    def forward(ctx, x_seq: torch.Tensor, tau: float, v_threshold: float, alpha: float) -> torch.Tensor:
        h_seq = torch.empty_like(x_seq)
        spikes = lif_forward(x_seq, tau, v_threshold, h_seq)
        ctx.save_for_backward(h_seq)
        ctx.constants = (tau, v_threshold, alpha)
        return spikes

    @staticmethod
    def backward(ctx, grad_spikes: torch.Tensor):
        (h_seq,) = ctx.saved_tensors
        tau, v_threshold, alpha = ctx.constants
        return lif_backward(grad_spikes, h_seq, tau, v_threshold, alpha), None, None, None


def charge_input(x_seq: torch.Tensor) -> torch.Tensor:
    """The tensor the training recurrence runs on: under an active autocast a float16/bfloat16 input upcast to
    float32, as the torch backend's TorchScript charge does (see module doc); otherwise ``x_seq`` itself."""
    if x_seq.dtype in _REDUCED and torch.is_autocast_enabled(x_seq.device.type):
        return x_seq.float()
    return x_seq


def fused_lif(x_seq: torch.Tensor, tau: float, v_threshold: float, alpha: float = 4.) -> torch.Tensor:
    """Spikes of a multi-step LIF (``v_0 = 0``, hard reset to 0) for ``x_seq`` of shape ``[T, ...]``.

    Keeps a graph (one node, one saved tensor) only when ``x_seq`` requires a gradient and grad mode is on.
    """
    spike_dtype = x_seq.dtype
    x_seq = charge_input(x_seq)
    if torch.is_grad_enabled() and x_seq.requires_grad:
        return LIFFunction.apply(x_seq, float(tau), float(v_threshold), float(alpha))
    # inference: the torch backend's eval kernel writes its spikes into a tensor of the input's dtype
    return lif_forward(x_seq, float(tau), float(v_threshold), spike_dtype=spike_dtype)
