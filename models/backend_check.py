"""The neuron backends ('torch', 'fused', 'cupy') compared on one device, neuron by neuron and on a whole model, with
the requirement each comparison must meet: the numerics of ``tests/test_gpu.py`` (which ``scripts/gpu_check.sh``
runs on a GPU) and of a CPU test, in a module so that both use one definition.

Neuron level (:func:`neuron_rows`, :func:`neuron_failure`): random drive (firing rates of 10-60 %), float32, float16
and bfloat16 inputs (no autocast: the recurrence runs in the input's dtype), tau 2 and 1.5, thresholds 1 and 0.5.
Each path's spikes are compared with SpikingJelly's 'torch' backend and with the true division by tau (the 'fused'
path on CPU, op by op in that dtype), its input gradient with the 'torch' backend's and with a float64 recomputation
of the backward from the same potentials. Requirements:

* 'fused' divides exactly on every device and in every dtype (no spike differs from the true division); float32
  gradients within 1e-4 (relative) of the 'torch' backend's where the spikes agree; float16/bfloat16 gradients
  within 1e-2 of float64 (its backward runs in float32, see ``models.fused_lif``).
* 'torch' equals the true division on CPU, and on CUDA in float32 for tau 2 (1/2 is exact). On CUDA PyTorch turns a
  division by a Python scalar into a multiplication by its reciprocal, so for tau 1.5 its spikes may differ. And
  TorchScript's fuser (NNC: on by default for CUDA, off for CPU) can fuse SpikingJelly's scripted charge there; its
  CUDA code computes a float16/bfloat16 ``v + (x - v) / tau`` in float32 and rounds once instead of three times,
  which changes 100-1,500 of the 4M spikes of a row (emulated on CPU; not yet seen on a GPU). Both reported only:
  the published numerics are the torch backend's in float32 (docs/recipe.md section 1), and 'fused' is held to the true
  division in every dtype.
* 'cupy' (SpikingJelly's CUDA kernel, float32 and float16; no bfloat16 kernel) equals 'torch' in float32 for tau 2
  (docs/recipe.md section 1: identical outputs and gradients). Its float16 kernel runs the recurrence in half precision
  and, for tau 1.5, multiplies by float32(1/tau) (docs/recipe.md section 1): those rows are reported, with a sanity
  bound only (under 1 % of spikes differ from 'torch', finite gradients).

Model level (:func:`model_rows`, :func:`model_failure`): the published CIFAR reference record
(``tests/fixtures``, tau 2) in train mode, one cross-entropy backward, float32 and under float16/bfloat16 autocast,
each path against the 'torch' backend on the same device: 'fused' has identical spikes in every neuron, float32
logits within 1e-5 and gradients within 1e-4 (1e-2 under autocast, whose convolutions round to half precision);
'cupy' the same in float32, and under float16 autocast (its half-precision recurrence) finite logits and gradients.

cuDNN runs deterministic algorithms and TF32 is off during the model comparison (restored after), so that the
paths' differences are the neurons' alone.
"""
import contextlib
import math
from typing import Optional, Sequence

import torch

from .fused_lif import lif_backward, lif_forward
from .neuron import LIF, cupy_available

DTYPES = {'float32': torch.float32, 'float16': torch.float16, 'bfloat16': torch.bfloat16}
CUPY_DTYPES = ('float32', 'float16')
ALPHA = 4.0  # the surrogate's (docs/recipe.md section 1)


def paths_on(device: torch.device) -> list:
    """The neuron paths that run on ``device``: 'torch' and 'fused' everywhere, 'cupy' on CUDA where CuPy imports."""
    return ['torch', 'fused'] + (['cupy'] if device.type == 'cuda' and cupy_available() else [])


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


def _run_neuron(path: str, x: torch.Tensor, grad: torch.Tensor, tau: float, v_threshold: float) -> tuple:
    neuron = LIF(tau=tau, v_threshold=v_threshold, backend=path).train()
    x = x.clone().requires_grad_(True)
    spikes = neuron(x)
    spikes.backward(grad)
    return spikes.detach(), x.grad


def neuron_rows(device: torch.device, dtype: str, tau: float, v_threshold: float, paths: Sequence[str],
                numel: int = 1 << 20, steps: int = 4, seed: int = 0) -> list:
    """One row per path (the 'torch' backend first, the reference) for a ``[steps, numel]`` drive in ``dtype``."""
    generator = torch.Generator().manual_seed(seed)
    x_cpu = (torch.randn(steps, numel, generator=generator) * 1.5 + 0.6).to(DTYPES[dtype])
    g_cpu = torch.randn(steps, numel, generator=generator).to(DTYPES[dtype])
    x, g = x_cpu.to(device), g_cpu.to(device)
    true_division = lif_forward(x_cpu, tau, v_threshold).to(device)
    potentials = torch.empty_like(x)
    lif_forward(x, tau, v_threshold, potentials)
    exact_grad = lif_backward(g.double(), potentials.double(), tau, v_threshold, ALPHA)
    results = {path: _run_neuron(path, x, g, tau, v_threshold) for path in ['torch'] + [p for p in paths
                                                                                        if p != 'torch']}
    ref_spikes, ref_grad = results['torch']
    rows = []
    for path, (spikes, grad) in results.items():
        rows.append(dict(dtype=dtype, tau=tau, v_threshold=v_threshold, path=path, device=device.type,
                         numel=spikes.numel(), firing_rate=float(spikes.float().mean()),
                         spikes_differing_from_torch=int((spikes != ref_spikes).sum()),
                         spikes_differing_from_true_division=int((spikes != true_division).sum()),
                         grad_rel_err_vs_torch=_relative(grad, ref_grad),
                         grad_rel_err_vs_float64=_relative(grad, exact_grad)))
    return rows


def neuron_failure(row: dict) -> Optional[str]:
    """Why ``row`` (of :func:`neuron_rows`) breaks its path's requirement (module docstring), or None."""
    path, half = row['path'], row['dtype'] != 'float32'
    if path == 'fused':
        if row['spikes_differing_from_true_division']:
            return 'fused spikes differ from the true division by tau'
        if not half and not row['spikes_differing_from_torch'] and row['grad_rel_err_vs_torch'] > 1e-4:
            return 'fused float32 gradient more than 1e-4 from the torch backend'
        if half and not row['grad_rel_err_vs_float64'] <= 1e-2:
            return f'fused {row["dtype"]} gradient more than 1e-2 from float64'
    elif path == 'torch':
        exact_here = row['device'] == 'cpu' or (row['tau'] == 2.0 and row['dtype'] == 'float32')
        if exact_here and row['spikes_differing_from_true_division']:
            return 'torch backend spikes differ from the true division by tau'
    elif path == 'cupy':
        if row['dtype'] == 'float32' and row['tau'] == 2.0:
            if row['spikes_differing_from_torch'] or row['grad_rel_err_vs_torch'] > 1e-4:
                return 'cupy differs from the torch backend in float32 for tau 2'
        elif row['spikes_differing_from_torch'] > 0.01 * row['numel'] or \
                not math.isfinite(row['grad_rel_err_vs_float64']):
            return 'cupy: over 1 % of spikes differ from the torch backend, or a gradient is not finite'
    return None


@contextlib.contextmanager
def _exact_convolutions():
    """cuDNN's deterministic algorithms and no TF32 inside the block; the previous settings after it."""
    flags = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32,
             torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32,
         torch.backends.cuda.matmul.allow_tf32) = flags


def _model_pass(record: dict, path: str, device: torch.device, amp: Optional[torch.dtype]) -> tuple:
    import timm

    from .checkpoint import checkpoint_filter_fn
    model = timm.create_model('Spikingformer', **record['kwargs'], backend=path)
    model.load_state_dict(checkpoint_filter_fn(record['state_dict'], model), strict=True)
    model = model.to(device).train()
    spikes = {}
    for name, module in model.named_modules():
        if isinstance(module, LIF):
            module.register_forward_hook(lambda m, i, o, name=name: spikes.__setitem__(name, o.detach()))
    with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
        logits = model(record['input'].to(device))
        loss = torch.nn.functional.cross_entropy(logits, record['target'].to(device))
    loss.backward()
    return logits.detach().float(), spikes, {n: p.grad.float() for n, p in model.named_parameters()}


def model_rows(record: dict, device: torch.device, amp: str, paths: Sequence[str]) -> list:
    """One row per path (the 'torch' backend first) for the reference ``record`` (``kwargs``, ``state_dict``,
    ``input``, ``target``, ``logits_train``) under ``amp`` ('float32' = no autocast, 'float16', 'bfloat16')."""
    dtype = None if amp == 'float32' else DTYPES[amp]
    with _exact_convolutions():
        results = {path: _model_pass(record, path, device, dtype) for path in ['torch'] + [p for p in paths
                                                                                          if p != 'torch']}
    ref_logits, ref_spikes, ref_grads = results['torch']
    floor = 1e-4 * max(g.norm() for g in ref_grads.values())
    rows = []
    for path, (logits, spikes, grads) in results.items():
        rows.append(dict(amp=amp, path=path, device=device.type, neurons=len(spikes),
                         neurons_with_differing_spikes=sum(not torch.equal(spikes[k], ref_spikes[k])
                                                           for k in ref_spikes),
                         spikes_differing=sum(int((spikes[k] != ref_spikes[k]).sum()) for k in ref_spikes),
                         logits_max_abs_diff=float((logits - ref_logits).abs().max()),
                         logits_max_abs_diff_vs_published=float((logits.cpu() - record['logits_train']).abs().max()),
                         grad_max_rel_err=max(float((grads[k] - ref_grads[k]).norm() / max(ref_grads[k].norm(), floor))
                                              for k in ref_grads),
                         finite=bool(torch.isfinite(logits).all()) and all(bool(torch.isfinite(g).all())
                                                                           for g in grads.values())))
    return rows


def model_failure(row: dict) -> Optional[str]:
    """Why ``row`` (of :func:`model_rows`) breaks its path's requirement (module docstring), or None."""
    if not row['finite']:
        return f'{row["path"]}: logits or gradients not finite'
    exact = row['path'] == 'fused' or (row['path'] == 'cupy' and row['amp'] == 'float32')
    if not exact:
        return None
    if row['spikes_differing']:
        return f'{row["path"]}: spikes differ from the torch backend'
    if row['amp'] == 'float32' and row['logits_max_abs_diff'] > 1e-5:
        return f'{row["path"]}: float32 logits more than 1e-5 from the torch backend'
    if row['grad_max_rel_err'] > (1e-4 if row['amp'] == 'float32' else 1e-2):
        return f'{row["path"]}: gradients further from the torch backend than allowed'
    return None
