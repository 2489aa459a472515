"""How much memory one training step needs, estimated before the first batch, and the refusal when it cannot fit.

The estimate is what a run holds between steps plus what one step adds:

* between steps: the weights (float32, 4 bytes per parameter), the optimizer's state (AdamW and the other Adam-like
  optimizers keep two tensors per weight, SGD with momentum one) and, with ``--model-ema``, one more copy;
* the step: a straight line per published variant, ``step memory = a + b * batch`` (MiB), measured with
  ``scripts/benchmark.py --fit-batch-sizes 1,2`` on CPU in float32 with the fused neuron path, without and with
  ``--grad-checkpointing`` (docs/speed.md has the table and the command): the peak memory allocated during a step
  above what the run held before it, i.e. activations, gradients and temporaries. ``a`` holds what does not grow with
  the batch (mostly the gradients), ``b`` the activations of one image, which grow linearly with the time steps and
  the number of pixels, so another ``T`` or image size scales ``b`` by ``T / T0 * (size / size0) ** 2``. Under
  autocast (bf16/fp16) ``b`` is multiplied by :data:`AMP_ACTIVATION_FACTOR`, measured the same way with bf16 on CPU.

These are estimates from CPU measurements: a GPU adds its CUDA context and allocator slack (:data:`CUDA_OVERHEAD_MIB`)
and its kernels keep other temporaries. So the check refuses only a run whose estimate exceeds the free memory, never
one that merely comes close, and ``--no-memory-check`` skips it. A model the table does not hold (a variant with
architecture overrides, the generic entry point) is not estimated: the check then says nothing and the run starts,
and an allocation failure during training is reported with the same numbers (:func:`out_of_memory_error`).
"""
import contextlib
from typing import Iterator, Optional

import torch

from utils.config import Config
from utils.errors import UserError

MIB = 2 ** 20
# variant: (T, image side, a, b, a with checkpointing, b with checkpointing), a and b in MiB: the step memory as
# allocated above what the run holds between steps (CPU, float32, fused LIF; measured at batch 1 and 2 for ImageNet
# and DVS, 8 and 16 for CIFAR: docs/speed.md)
MEASURED = {
    'spikingformer_8_384': (4, 224, 4, 539.7, 65, 121.7),
    'spikingformer_8_512': (4, 224, 7, 719.9, 114, 161.5),
    'spikingformer_8_768': (4, 224, 13, 1081.6, 254, 241.2),
    'spikingformer_cifar_4_256': (4, 32, 1, 47.8, 8, 19.4),
    'spikingformer_cifar_2_384': (4, 32, 3, 49.9, 9, 28.7),
    'spikingformer_cifar_4_384': (4, 32, 3, 72.0, 23, 28.7),
    'spikingformer_dvs_2_256': (16, 128, -3, 298.5, 6, 108.0),
}
AMP_ACTIVATION_FACTOR = 0.77  # 8-768, bf16 on CPU: 837 MiB per image against 1082 in float32
CUDA_OVERHEAD_MIB = 600  # CUDA context and allocator slack, a rough allowance


class MemoryEstimateError(UserError):
    """A run whose estimated step memory exceeds the device's free memory, or one that ran out of it."""


def estimate_step_mib(cfg: Config) -> Optional[float]:
    """The estimated memory of one training step of ``cfg`` per process (MiB), weights and optimizer state included;
    None when the model is not one of :data:`MEASURED` as published (architecture overrides change the line)."""
    if cfg.model not in MEASURED or any(getattr(cfg, k) is not None for k in ('embed_dims', 'depths', 'num_heads')):
        return None
    T0, side0, a, b, a_ckpt, b_ckpt = MEASURED[cfg.model]
    if cfg.grad_checkpointing:
        a, b = a_ckpt, b_ckpt
    side = cfg.img_size or side0
    b = b * cfg.time_steps / T0 * (side / side0) ** 2
    if cfg.amp:
        b *= AMP_ACTIVATION_FACTOR
    weights = weights_mib(cfg.model)
    return a + b * cfg.batch_size + weights * (1 + optimizer_copies(cfg) + bool(cfg.model_ema))


def optimizer_copies(cfg: Config) -> int:
    """How many weight-sized tensors the optimizer keeps: one for timm's SGD family (``sgd``, ``momentum``,
    ``nesterov``: momentum 0.9 in ``create_optimizer_v2``), two for AdamW and every other optimizer (Adam-like ones
    keep two; for the rest it errs on the large side)."""
    return 1 if cfg.opt.lower().split('_')[-1] in ('sgd', 'momentum', 'nesterov') else 2


def weights_mib(model: str) -> float:
    import timm
    with torch.device('meta'):
        net = timm.create_model(model)
    return sum(p.numel() for p in net.parameters()) * 4 / MIB


def free_memory_mib(device: torch.device, processes_here: int = 1) -> Optional[float]:
    """Free memory for one process: the GPU's free memory (``torch.cuda.mem_get_info``), or on CPU the available RAM
    (``MemAvailable`` of /proc/meminfo) shared by the ``processes_here`` processes of this host; None if unknown."""
    if device.type == 'cuda':
        return torch.cuda.mem_get_info(device)[0] / MIB
    try:
        with open('/proc/meminfo') as f:
            for line in f:
                if line.startswith('MemAvailable:'):
                    return int(line.split()[1]) * 1024 / MIB / max(processes_here, 1)
    except OSError:
        pass
    return None


def _what_to_do(cfg: Config) -> str:
    options = []
    if not cfg.grad_checkpointing:
        options.append('--grad-checkpointing (the same numbers, less memory, more time)')
    half = max(cfg.batch_size // 2, 1)
    options.append(f'a smaller --batch-size with --grad-accum-steps to keep the global batch (e.g. --batch-size {half} '
                   f'--grad-accum-steps {cfg.grad_accum_steps * 2})')
    options.append('fewer time steps (-T; this changes the model)')
    return 'Options: ' + '; '.join(options) + '.'


def check_step_memory(cfg: Config, device: torch.device, processes_here: int = 1) -> Optional[str]:
    """Refuse (:class:`MemoryEstimateError`) a run whose estimated step memory exceeds the free memory of ``device``;
    returns a line for the log with both numbers, or None when either is unknown or the check is off."""
    if not cfg.memory_check:
        return None
    need = estimate_step_mib(cfg)
    if need is None:
        return None
    if device.type == 'cuda':
        need += CUDA_OVERHEAD_MIB
    free = free_memory_mib(device, processes_here)
    if free is None:
        return None
    where = 'GPU memory free' if device.type == 'cuda' else 'RAM available per process'
    what = (f'{cfg.model} at batch {cfg.batch_size} per process, T={cfg.time_steps}, image {cfg.img_size}, '
            f'{"amp" if cfg.amp else "float32"}{", grad checkpointing" if cfg.grad_checkpointing else ""}')
    if need > free:
        raise MemoryEstimateError(
            f'one training step of {what} needs about {need / 1024:.1f} GiB (estimated from measurements, '
            f'docs/speed.md), but only {free / 1024:.1f} GiB of {where} on {device}.\n{_what_to_do(cfg)}\n'
            f'If you know the step fits (the estimate comes from CPU float32 measurements), --no-memory-check skips '
            f'this check.')
    return f'memory: one training step needs about {need / 1024:.1f} GiB (estimate), {free / 1024:.1f} GiB {where}'


def out_of_memory_error(cfg: Config, device: torch.device, error: BaseException) -> MemoryEstimateError:
    """The one-screen error for an allocation that failed during training (``torch.OutOfMemoryError`` on CUDA, a
    ``RuntimeError`` from the CPU allocator), with the numbers of the run."""
    need = estimate_step_mib(cfg)
    free = free_memory_mib(device)
    numbers = ''.join([f', estimated step memory {need / 1024:.1f} GiB' if need is not None else '',
                       f', {free / 1024:.1f} GiB free now' if free is not None else ''])
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return MemoryEstimateError(
        f'out of memory on {device} training {cfg.model} at batch {cfg.batch_size} per process, T={cfg.time_steps}'
        f'{numbers} ({first[:200]}).\n{_what_to_do(cfg)}\nThe checkpoints of the run folder are left as they were.')


@contextlib.contextmanager
def out_of_memory_reported(cfg: Config, device: torch.device) -> Iterator[None]:
    """An allocation failure inside the block becomes :func:`out_of_memory_error` (exit 2, one screen)."""
    try:
        yield
    except (torch.OutOfMemoryError, RuntimeError) as e:
        if is_out_of_memory(e):
            raise out_of_memory_error(cfg, device, e) from None
        raise


def is_out_of_memory(error: BaseException) -> bool:
    """An allocation failure: CUDA's ``torch.OutOfMemoryError``, or the CPU allocator's RuntimeError."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("can't allocate memory" in text or 'out of memory' in text.lower())
