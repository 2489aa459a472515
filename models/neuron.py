"""The one spiking neuron of Spikingformer: a multi-step LIF with hard reset (docs/recipe.md section 1).

Every neuron of the network is built by :func:`lif`, the single factory, so the neuron model, its constants and
its compute backend are decided in one place.

The neuron is SpikingJelly's ``activation_based.neuron.LIFNode`` in multi-step mode (decay_input, v_reset 0,
detach_reset, surrogate ``Sigmoid(alpha=4)``), the neuron of the published ``clock_driven.MultiStepLIFNode``
(its ``torch`` backend's arithmetic exactly; for the CuPy kernel see ``'cupy'`` below). Two things are added on top:

* **No state between calls.** SpikingJelly neurons keep their membrane potential after a forward pass, and the
  published scripts must call ``functional.reset_net`` after every batch; forgetting it silently corrupts the next
  batch. :class:`LIF` starts every forward from ``v = 0``, so a forward never depends on an earlier one.
  Calling ``reset_net`` stays harmless.
* **Backend per call.** The published code hard-codes ``backend='cupy'`` and so crashes on any machine without
  CuPy or a GPU. Backends here:

  - ``'torch'``: SpikingJelly's plain PyTorch backend, any device; the baseline the others are checked against.
  - ``'cupy'``: SpikingJelly's CuPy CUDA kernel (float32 and float16 only; needs CuPy). SpikingJelly 0.0.0.0.14
    runs it in training only (in ``eval()`` its TorchScript path divides by tau), and its float16 charge rounds
    twice where the published 0.0.0.0.12 kernel used one fused multiply-add: not the published kernel in those two
    cases, which matter for tau 1.5 only (docs/differences.md, *The neuron on a GPU*).
  - ``'fused'``: :mod:`models.fused_lif`, one autograd node per neuron with a hand-written backward, any device and
    dtype. Same spikes as ``'torch'`` bit for bit (same operations in the same order and dtype, true division by
    tau), gradients equal up to float rounding, a fraction of the memory and of the time.
  - ``'auto'`` (default): ``'cupy'`` on CUDA input with CuPy importable in float32 or float16 (where the published
    code ran its kernel), ``'fused'`` everywhere else (CPU, CUDA without CuPy, bfloat16).
"""
import functools

import torch
from spikingjelly.activation_based import neuron, surrogate

from .fused_lif import fused_lif

BACKENDS = ('auto', 'torch', 'cupy', 'fused')
_CUPY_DTYPES = (torch.float32, torch.float16)  # SpikingJelly's CuPy LIF kernel has no bfloat16 path


@functools.lru_cache(maxsize=None)
def cupy_available() -> bool:
    """Whether CuPy imports (it is optional: only CUDA users install it)."""
    try:
        import cupy  # noqa: F401
    except Exception:  # ImportError, or a CuPy built for another CUDA that fails at import
        return False
    return True


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown neuron backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == 'cupy' and not cupy_available():
        raise RuntimeError("neuron backend 'cupy' was requested but CuPy is not installed (or does not import). "
                           "Install the CuPy wheel matching your CUDA (e.g. `pip install cupy-cuda12x`) or use "
                           "backend 'auto', 'fused' or 'torch', which run anywhere with the same results.")
    return backend


def resolve_backend(backend: str, x: torch.Tensor) -> str:
    """The backend ('torch', 'cupy' or 'fused') that runs input ``x`` for the requested ``backend``."""
    if backend in ('torch', 'fused'):
        return backend
    runs_on_cupy = x.is_cuda and x.dtype in _CUPY_DTYPES and cupy_available()
    if backend == 'cupy':
        if not runs_on_cupy:
            raise RuntimeError(f"neuron backend 'cupy' cannot run a {x.dtype} tensor on {x.device}: the CuPy "
                               f"kernel needs a CUDA tensor of float32 or float16. Use backend 'auto', 'fused' or "
                               f"'torch'.")
        return 'cupy'
    return 'cupy' if runs_on_cupy else 'fused'


class LIF(neuron.LIFNode):
    """Multi-step LIF (``[T, ...]`` in, spikes ``[T, ...]`` out) that starts from ``v = 0`` on every call.

    ``requested_backend`` is what the user asked for ('auto', 'torch', 'cupy' or 'fused'); at each call it is resolved
    from the input's device and dtype (:func:`resolve_backend`). 'torch' and 'cupy' run SpikingJelly's own forward
    (its ``backend`` attribute is set accordingly); 'fused' runs :func:`models.fused_lif.fused_lif` and leaves the
    SpikingJelly state untouched (``v`` stays at its reset value: no state outlives a call anyway).
    """

    def __init__(self, tau: float = 2.0, v_threshold: float = 1.0, backend: str = 'auto'):
        super().__init__(tau=float(tau), decay_input=True, v_threshold=float(v_threshold), v_reset=0.,
                         surrogate_function=surrogate.Sigmoid(alpha=4.), detach_reset=True, step_mode='m',
                         backend='torch')
        self.requested_backend = check_backend(backend)

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        self.reset()
        backend = resolve_backend(self.requested_backend, x_seq)
        if backend == 'fused':
            return fused_lif(x_seq, self.tau, self.v_threshold, self.surrogate_function.alpha)
        self.backend = backend
        return super().forward(x_seq)

    def extra_repr(self) -> str:
        return f'tau={self.tau}, v_threshold={self.v_threshold}, backend={self.requested_backend}'


def lif(tau: float = 2.0, v_threshold: float = 1.0, backend: str = 'auto') -> LIF:
    """The factory every Spikingformer neuron is built from."""
    return LIF(tau=tau, v_threshold=v_threshold, backend=backend)


def set_backend(model: torch.nn.Module, backend: str) -> torch.nn.Module:
    """Set the backend of every neuron in ``model`` ('auto', 'torch', 'cupy' or 'fused'); returns the model."""
    check_backend(backend)
    for module in model.modules():
        if isinstance(module, LIF):
            module.requested_backend = backend
    return model
