"""Operation counting with forward hooks: which layer does MACs, which does ACs, and how many (SPEC section 6).

Everything is found from the model itself, by module type, never by module name:

* **Counted layers** are every ``nn.Conv1d/2d/3d`` and ``nn.Linear`` (subclasses included). Their dense operation
  count per call is ``output elements x (kernel x in-channels / groups)`` (``in_features`` for a linear layer),
  plus one per output element when the layer has a bias. Over ``T*B`` time-merged inputs this is "all T steps".
* **MAC or AC** is decided structurally, not from the values: a layer does ACs when its input tensor *was produced
  by a spiking neuron* (a ``models.LIF``, or any SpikingJelly neuron), directly, through a view of it (``flatten``,
  ``reshape`` without copy, ``transpose``, slicing) or through a spike-preserving module (max pooling, identity,
  flatten, dropout in eval). Any other input (the image, event-count frames, the token- and time-averaged features
  before the head) makes the layer a dense MAC layer with rate 1. A value test ("all values are 0 or 1") would
  count the first convolution of a DVS model as ACs whenever the event counts of a batch happen to be 0/1, and it
  needs a host sync per layer; the structural rule is stable and sync-free.
  Provenance is tracked by storage: each neuron output's storage is recorded with a *weak* reference
  (``StorageWeakRef``); an input is spikes when its storage is one of those and that storage is still the same live
  allocation (a freed one whose address the allocator hands out again is expired, so it cannot be mistaken for
  spikes). Views share their base's storage, also under ``torch.inference_mode`` (where ``Tensor._base`` is unset).
  A copy of spikes (``.contiguous()`` of a non-contiguous view, arithmetic) loses the mark and the layer is counted
  as MACs: conservative, and visible as ``kind='mac'`` in the report.
* **AC layers** count ``dense ops x firing rate of the input`` (the mean of the 0/1 input, i.e. the fraction of
  ones). Per batch ``b`` this is ``dense_b * ones_b / numel_b``, summed over batches and divided by the number of
  samples: the published calculator's rule (it adds ``dense_b * rate_b`` per batch and divides by the sample count).
* **Attention products** of each ``SpikingSelfAttention`` (found by type): ``T * heads * N * d^2`` dense ACs for
  ``K^T V`` at rate ``min(r_k, r_v)`` and as many for ``Q (K^T V)`` at rate ``r_q``, with ``r`` the firing rates of
  its ``q_lif``, ``k_lif``, ``v_lif`` and ``T, N, d`` read from the shape of the Q spikes ``[T, B, C, N]``.

Counts stay on the device as tensors (no host sync per layer); the host reads them once, in
:meth:`EnergyCounter.report`. Hooks read their tensors and never change them, so the model's outputs are unchanged.
"""
import math
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
from spikingjelly.activation_based import neuron as sj_neuron
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef

import models
from models.layers import SpikingSelfAttention

from .report import AttentionRates, EnergyReport, LayerEnergy

COUNTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
# Modules whose output holds spikes whenever their input does (max of 0/1 values is 0/1; the rest copy or view).
SPIKE_PRESERVING = (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd, nn.Identity, nn.Flatten,
                    nn.Unflatten, nn.modules.dropout._DropoutNd)
RATE_AVERAGES = ('samples', 'batches')


def neuron_types() -> tuple:
    """Module types whose outputs are spikes: ``models.LIF`` and every SpikingJelly neuron.

    SpikingJelly's legacy ``clock_driven`` package (used by the published code) is included only when something has
    already imported it, so that counting never pays for its import.
    """
    types = [models.LIF, sj_neuron.BaseNode]
    legacy = sys.modules.get('spikingjelly.clock_driven.neuron')
    if legacy is not None:
        types.append(legacy.BaseNode)
    return tuple(types)


def dense_ops(module: nn.Module, output: torch.Tensor) -> int:
    """Dense operation count of one call of a convolution or linear layer, from its output shape.

    ``kernel x in-channels`` multiply-accumulates per output element (``in_channels / groups`` for a grouped
    convolution; this equals the published ``kernel x in x out/groups`` per output position), plus one per output
    element for the bias. For a linear layer on ``[..., in]`` that is ``rows x out x (in + 1)``; the published hook
    counts the bias only ``input.shape[0]`` times, which differs for inputs of more than two dimensions (no
    Spikingformer linear layer has such an input: its one linear layer, the head, sees ``[B, C]``).
    """
    out = output.numel()
    if isinstance(module, nn.Linear):
        per_output = module.in_features
    else:
        per_output = math.prod(module.kernel_size) * (module.in_channels // module.groups)
    return out * per_output + (out if module.bias is not None else 0)


@dataclass(eq=False)
class _Layer:
    name: str
    kind: str  # 'mac' | 'ac'
    dense: int = 0  # summed over calls
    numel: int = 0  # input elements seen (AC layers)
    ones: Optional[torch.Tensor] = None  # device float64: ones among the input elements (AC layers)
    ops: Optional[torch.Tensor] = None  # device float64: sum over calls of dense * ones / numel (AC layers)


@dataclass(eq=False)
class _Rate:
    numel: int = 0
    calls: int = 0
    ones: Optional[torch.Tensor] = None  # device float64
    rate_sum: Optional[torch.Tensor] = None  # device float64, sum over calls of ones / numel


@dataclass(eq=False)
class _Attention:
    name: str
    heads: int
    rates: Dict[str, _Rate] = field(default_factory=lambda: {'q': _Rate(), 'k': _Rate(), 'v': _Rate()})
    dense: int = 0  # summed over calls of q_lif: T * B * heads * N * d^2
    shape: Optional[Tuple[int, int, int]] = None  # (T, N, d) of the last call


@dataclass(eq=False)
class _Mark:
    """A spike storage seen in the current forward pass, and its count of ones once some layer asked for it."""
    ref: StorageWeakRef
    ones: Optional[torch.Tensor] = None


_EXACT = 1 << 24  # float32 represents every integer up to 2^24, so a float32 sum of that many 0/1 values is exact


def count_ones(spikes: torch.Tensor) -> torch.Tensor:
    """The number of ones in a 0/1 tensor, exactly, as a float64 device scalar, without a host sync.

    A float32 sum is exact for up to 2^24 elements (every partial sum is a small integer), and on CPU it is about 30
    times faster than ``count_nonzero``; larger tensors are summed in rows of 2^24 and the row sums added in float64.
    Half-precision spikes (autocast) are summed in float32 too.
    """
    flat = spikes.reshape(-1)
    n = flat.numel()
    if n <= _EXACT:
        return flat.sum(dtype=torch.float32).double()
    whole = n - n % _EXACT
    total = flat[:whole].view(-1, _EXACT).sum(dim=1, dtype=torch.float32).sum(dtype=torch.float64)
    return total + flat[whole:].sum(dtype=torch.float32).double()


def _add(acc: Optional[torch.Tensor], value: torch.Tensor) -> torch.Tensor:
    return value.clone() if acc is None else acc.add_(value)


class EnergyCounter:
    """Context manager that counts operations of every forward pass of ``model`` while it is active.

    >>> with EnergyCounter(model) as counter:
    ...     for x, _ in loader:
    ...         model(x)
    >>> report = counter.report()

    The number of samples is the leading dimension of the model's first positional input, per call (``[B, C, H, W]``
    images and ``[B, T, C, H, W]`` event frames alike). ``rate_average`` only affects the attention products'
    firing rates: 'samples' (default) pools all evaluated elements, so the estimate does not depend on how the data
    were batched; 'batches' averages per-batch rates with equal weight, which is what the published calculator does
    (the two agree whenever all batches have the same size). Convolution and linear ACs are sums of per-batch counts
    either way. Hooks are removed on exit, also on error.
    """

    def __init__(self, model: nn.Module, rate_average: str = 'samples'):
        if rate_average not in RATE_AVERAGES:
            raise ValueError(f"rate_average must be one of {RATE_AVERAGES}, got {rate_average!r}")
        self.model = model
        self.rate_average = rate_average
        self.samples = 0
        self.batches = 0
        self._handles: List[torch.utils.hooks.RemovableHandle] = []
        self._marks: Dict[int, _Mark] = {}
        self._layers: Dict[Tuple[int, str], _Layer] = {}
        self._attention: Dict[int, _Attention] = {}
        self._order: List[object] = []  # _Layer and _Attention entries in order of first execution
        self._roles: Dict[int, Tuple[_Attention, str]] = {}

    # ---------------------------------------------------------------- hooks
    def __enter__(self) -> 'EnergyCounter':
        try:
            self._attach()
        except BaseException:
            self._detach()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._detach()
        self._marks.clear()

    def _attach(self) -> None:
        neurons = neuron_types()
        names = {module: name for name, module in self.model.named_modules()}
        for module, name in names.items():
            if isinstance(module, SpikingSelfAttention):
                attention = _Attention(name=name or 'attn', heads=module.num_heads)
                self._attention[id(module)] = attention
                for role, lif in (('q', module.q_lif), ('k', module.k_lif), ('v', module.v_lif)):
                    self._roles[id(lif)] = (attention, role)
        hook = self._handles.append
        hook(self.model.register_forward_pre_hook(self._on_model_input))
        for module, name in names.items():
            if isinstance(module, neurons):
                hook(module.register_forward_hook(self._on_spikes))
            elif isinstance(module, COUNTED):
                hook(module.register_forward_hook(self._counted_hook(name or type(module).__name__)))
            elif isinstance(module, SPIKE_PRESERVING):
                hook(module.register_forward_hook(self._on_preserving))

    def _detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _on_model_input(self, module, args) -> None:
        self._marks.clear()
        if args and isinstance(args[0], torch.Tensor) and args[0].dim() > 0:
            self.samples += args[0].shape[0]
        else:
            self.samples += 1
        self.batches += 1

    def _mark(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        if storage.data_ptr():
            self._marks[storage.data_ptr()] = _Mark(StorageWeakRef(storage))

    def _spike_mark(self, tensor: torch.Tensor) -> Optional['_Mark']:
        mark = self._marks.get(tensor.untyped_storage().data_ptr())
        return mark if mark is not None and not mark.ref.expired() else None

    def _is_spikes(self, tensor: torch.Tensor) -> bool:
        return self._spike_mark(tensor) is not None

    def _ones(self, tensor: torch.Tensor, mark: Optional['_Mark']) -> torch.Tensor:
        """Ones in the spike tensor ``tensor`` (a device scalar). A tensor covering its whole spike storage is counted
        once per forward, however many layers read it (Q, K and V convolutions share one input)."""
        whole = (mark is not None and tensor.storage_offset() == 0
                 and tensor.numel() * tensor.element_size() == tensor.untyped_storage().nbytes())
        if not whole:
            return count_ones(tensor)
        if mark.ones is None:
            mark.ones = count_ones(tensor)
        return mark.ones

    def _on_spikes(self, module, args, output) -> None:
        if not isinstance(output, torch.Tensor):
            return
        self._mark(output)
        role = self._roles.get(id(module))
        if role is not None:
            self._count_attention(*role, output, self._spike_mark(output))

    def _on_preserving(self, module, args, output) -> None:
        if args and isinstance(args[0], torch.Tensor) and isinstance(output, torch.Tensor) and self._is_spikes(args[0]):
            self._mark(output)

    def _counted_hook(self, name: str):
        def hook(module, args, output):
            x = args[0]
            mark = self._spike_mark(x)
            kind = 'ac' if mark is not None else 'mac'
            key = (id(module), kind)
            layer = self._layers.get(key)
            if layer is None:
                layer = self._layers[key] = _Layer(name=name, kind=kind)
                self._order.append(layer)
            dense = dense_ops(module, output)
            layer.dense += dense
            if kind == 'ac' and x.numel():
                ones = self._ones(x, mark)
                layer.ones = _add(layer.ones, ones)
                layer.ops = _add(layer.ops, ones * (dense / x.numel()))
                layer.numel += x.numel()
        return hook

    def _count_attention(self, attention: _Attention, role: str, spikes: torch.Tensor, mark) -> None:
        rate = attention.rates[role]
        ones = self._ones(spikes, mark)
        rate.ones = _add(rate.ones, ones)
        rate.rate_sum = _add(rate.rate_sum, ones / max(spikes.numel(), 1))
        rate.numel += spikes.numel()
        rate.calls += 1
        if role == 'q':  # Q spikes are [T, B, C, N...]
            T, B, C = spikes.shape[:3]
            N = math.prod(spikes.shape[3:])
            d = C // attention.heads
            attention.shape = (T, N, d)
            attention.dense += T * B * attention.heads * N * d * d
        if attention not in self._order and all(r.calls for r in attention.rates.values()):
            self._order.append(attention)

    # ---------------------------------------------------------------- results
    def report(self, e_mac_pj: float = 4.6, e_ac_pj: float = 0.9, top1: Optional[float] = None) -> EnergyReport:
        """Per-sample counts and energy of everything counted so far (one host sync)."""
        if not self.samples:
            raise ValueError('no forward pass was counted: the batches were empty')
        # Read every device accumulator in one transfer.
        tensors, slots = [], []
        for entry in self._order:
            if isinstance(entry, _Layer):
                if entry.kind == 'ac':
                    slots.append((entry, 'ones'))
                    slots.append((entry, 'ops'))
            else:
                for role in 'qkv':
                    slots.append((entry.rates[role], 'ones'))
                    slots.append((entry.rates[role], 'rate_sum'))
        for obj, attr in slots:
            value = getattr(obj, attr)
            tensors.append(torch.zeros((), dtype=torch.float64) if value is None else value.double().cpu())
        values = torch.stack(tensors).tolist() if tensors else []
        host = {(id(obj), attr): v for (obj, attr), v in zip(slots, values)}

        S = self.samples
        layers: List[LayerEnergy] = []
        attention_rates: List[AttentionRates] = []
        for entry in self._order:
            if isinstance(entry, _Layer):
                dense = entry.dense / S
                if entry.kind == 'mac':
                    rate, ops, pj = 1.0, dense, e_mac_pj
                else:
                    rate = host[(id(entry), 'ones')] / entry.numel if entry.numel else 0.0
                    ops, pj = host[(id(entry), 'ops')] / S, e_ac_pj
                layers.append(LayerEnergy(entry.name, entry.kind, dense, rate, ops, ops * pj * 1e-9))
                continue
            r = {}
            for role in 'qkv':
                rate = entry.rates[role]
                if self.rate_average == 'batches':
                    r[role] = host[(id(rate), 'rate_sum')] / rate.calls
                else:
                    r[role] = host[(id(rate), 'ones')] / rate.numel if rate.numel else 0.0
            T, N, d = entry.shape
            attention_rates.append(AttentionRates(entry.name, entry.heads, T, N, d, r['q'], r['k'], r['v']))
            dense = entry.dense / S  # = T * heads * N * d^2 per sample
            for suffix, rate in (('product_kv', min(r['k'], r['v'])), ('product_q', r['q'])):
                ops = dense * rate
                layers.append(LayerEnergy(f'{entry.name}.{suffix}', 'ac', dense, rate, ops, ops * e_ac_pj * 1e-9))
        return EnergyReport.from_layers(layers, samples=S, top1=top1, e_mac_pj=e_mac_pj, e_ac_pj=e_ac_pj,
                                        attention=attention_rates, rate_average=self.rate_average)
