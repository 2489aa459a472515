"""Operation counting with forward hooks: which layer does MACs, which does ACs, and how many (docs/recipe.md section
6).

Everything is found from the model itself, by module type, never by module name (the hooks and the spike
provenance are :class:`energy.hooks.SpikeHooks`, shared with the spike recorder):

* **Counted layers** are every ``nn.Conv1d/2d/3d`` and ``nn.Linear`` (subclasses included). Their dense operation
  count per call is ``output elements x (kernel x in-channels / groups)`` (``in_features`` for a linear layer),
  plus one per output element when the layer has a bias. Over ``T*B`` time-merged inputs this is "all T steps".
* **MAC or AC** is decided structurally, not from the values: a layer does ACs when its input tensor *was produced
  by a spiking neuron* (a ``models.LIF``, or any SpikingJelly neuron), directly, through a view of it (``flatten``,
  ``reshape`` without copy, ``transpose``, slicing) or through a spike-preserving module (max pooling, identity,
  flatten, dropout in eval). Any other input (the image, event-count frames, the token- and time-averaged features
  before the head) makes the layer a dense MAC layer with rate 1. A value test ("all values are 0 or 1") would
  count the first convolution of a DVS model as ACs whenever the event counts of a batch happen to be 0/1, and it
  needs a host sync per layer; the structural rule is stable and sync-free. Copies (``.contiguous()``, dtype casts)
  keep the mark; other arithmetic on spikes loses it and the layer is counted as MACs: conservative, and visible as
  ``kind='mac'`` in the report.
* **Spike counts** (sums of spikes, as Spikformer's residual stream carries them; followed by
  :class:`energy.hooks.OpWatch` with a structural bound ``count_max``) are priced by one of the two counting rules of
  the Spikingformer paper's Appendix G, chosen per report (``multispike``; one pass serves both):
  ``'mac'`` (default; the published calculator's ``Nspks_max = 1``): only 0/1 spikes are event-driven, a layer on
  counts costs its dense operations as MACs; ``'ac'`` (``Nspks_max = 30``): a layer on counts of at most 30 costs
  ``dense ops x mean count`` ACs (more than 30: MACs). The published calculator tests each batch's values (at most
  ``Nspks_max + 1`` distinct values in ``[0, Nspks_max]``); this counter uses where the values come from, so a layer
  on a sum of spikes is a count layer even in a batch where no two spikes happened to coincide, and the model's
  input (image or event counts) is always dense MACs.
* **AC layers** count ``dense ops x firing rate of the input`` (the mean of the 0/1 input, i.e. the fraction of
  ones). Per batch ``b`` this is ``dense_b * ones_b / numel_b``, summed over batches and divided by the number of
  samples: the published calculator's rule (it adds ``dense_b * rate_b`` per batch and divides by the sample count).
* **Attention products** of each ``SpikingSelfAttention``, or any module with ``num_heads`` and ``q_lif``/``k_lif``/
  ``v_lif`` neurons (:func:`energy.hooks.is_attention`: Spikformer's SSA too): ``T * heads * N * d^2`` dense ACs for
  ``K^T V`` at rate ``min(r_k, r_v)`` and as many for ``Q (K^T V)`` at rate ``r_q``, with ``r`` the firing rates of
  its ``q_lif``, ``k_lif``, ``v_lif``; ``T`` and ``B`` are the first two dimensions of the Q spikes, ``C`` the
  attention's width (:func:`energy.hooks.attention_dim`), ``N`` the rest (channel-first ``[T, B, C, N]`` and
  channel-last ``[T, B, N, C]`` alike).
* **Unclassified** operations (a matrix product outside a recognised attention, a functional convolution, a module
  with parameters that is no counted layer, neuron or normalisation: a custom op) are listed by module name in the
  report's ``unclassified`` and left out of the totals, never silently.
* **Groups** (for the figure): each operation belongs to the tokenizer, an attention or an MLP by the type of the
  module it sits in (``SpikingTokenizer``, ``SpikingSelfAttention``, ``MLP``); the model's classifier (timm's
  ``pretrained_cfg['classifier']``) is the head; anything else is 'other'.

Counts stay on the device as tensors (no host sync per layer); the host reads them once, in
:meth:`EnergyCounter.report`. Hooks read their tensors and never change them, so the model's outputs are unchanged.
"""
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from models.layers import MLP, SpikingSelfAttention, SpikingTokenizer

from .constants import E_AC_PJ, E_MAC_PJ
from .hooks import (COUNTED, SPIKE_PRESERVING, SpikeHooks, SpikeMark, attention_dim, count_ones,  # noqa: F401
                    is_attention, neuron_types)
from .report import AttentionRates, EnergyReport, LayerEnergy, Unclassified

RATE_AVERAGES = ('samples', 'batches')
# The two counting rules of the paper's Appendix G: the largest spike count a layer's input may hold and still cost
# ACs (the published calculator's ``Nspks_max``).
NSPKS_MAX = {'mac': 1, 'ac': 30}
MULTISPIKE = tuple(NSPKS_MAX)


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
    kind: str  # 'mac' | 'ac' | 'counts' (input: spike counts, priced by the report's rule)
    dense: int = 0  # summed over calls
    numel: int = 0  # input elements seen (AC and count layers)
    ones: Optional[torch.Tensor] = None  # device float64: ones (sum of counts) among the input elements
    ops: Optional[torch.Tensor] = None  # device float64: sum over calls of dense * ones / numel
    count_max: int = 1  # the largest count the input can hold (count layers)


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
    dim: Optional[int]
    rates: Dict[str, _Rate] = field(default_factory=lambda: {'q': _Rate(), 'k': _Rate(), 'v': _Rate()})
    dense: int = 0  # summed over calls of q_lif: T * B * heads * N * d^2
    shape: Optional[Tuple[int, int, int]] = None  # (T, N, d) of the last call


def _add(acc: Optional[torch.Tensor], value: torch.Tensor) -> torch.Tensor:
    return value.clone() if acc is None else acc.add_(value)


GROUP_TYPES = ((SpikingTokenizer, 'tokenizer'), (SpikingSelfAttention, 'attention'), (MLP, 'MLP'))


def layer_groups(model: nn.Module, names: Dict[nn.Module, str]) -> Dict[str, str]:
    """Group of every module by name: 'tokenizer', 'attention' or 'MLP' from the innermost enclosing module of
    those types, 'head' for the model's classifier (timm's ``pretrained_cfg['classifier']``), else 'other'."""
    by_name = {name: module for module, name in names.items()}
    classifier = (getattr(model, 'pretrained_cfg', None) or {}).get('classifier')
    groups = {}
    for name in by_name:
        parts = name.split('.') if name else []
        group = 'head' if name and name == classifier else 'other'
        for end in range(len(parts), 0, -1):
            module = by_name.get('.'.join(parts[:end]))
            found = [g for t, g in GROUP_TYPES if isinstance(module, t)] or (['attention'] if module is not None
                                                                              and is_attention(module) else [])
            if found:
                group = found[0]
                break
        groups[name] = group
    return groups


class EnergyCounter(SpikeHooks):
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
        super().__init__(model)
        self.rate_average = rate_average
        self._layers: Dict[Tuple[int, str], _Layer] = {}
        self._attention: Dict[int, _Attention] = {}
        self._order: List[object] = []  # _Layer and _Attention entries in order of first execution
        self._roles: Dict[int, Tuple[_Attention, str]] = {}
        self._groups: Dict[str, str] = {}
        self._unclassified: Dict[Tuple[str, str], list] = {}  # (module name, what) -> [calls, dense ops or None]

    # ---------------------------------------------------------------- hooks
    def setup(self, names: Dict[nn.Module, str]) -> None:
        self._groups = layer_groups(self.model, names)
        for module, name in names.items():
            if is_attention(module):
                attention = _Attention(name=name or 'attn', heads=module.num_heads, dim=attention_dim(module))
                self._attention[id(module)] = attention
                for role, lif in (('q', module.q_lif), ('k', module.k_lif), ('v', module.v_lif)):
                    self._roles[id(lif)] = (attention, role)

    def on_spikes(self, name: str, module: nn.Module, spikes: torch.Tensor, mark: Optional[SpikeMark]) -> None:
        role = self._roles.get(id(module))
        if role is not None:
            self._count_attention(*role, spikes, mark)

    def on_layer(self, name: str, module: nn.Module, x: torch.Tensor, output: torch.Tensor,
                 mark: Optional[SpikeMark]) -> None:
        kind = 'mac' if mark is None else 'ac' if mark.count_max <= 1 else 'counts'
        key = (id(module), kind)
        layer = self._layers.get(key)
        if layer is None:
            layer = self._layers[key] = _Layer(name=name, kind=kind)
            self._order.append(layer)
        dense = dense_ops(module, output)
        layer.dense += dense
        if kind == 'counts':
            layer.count_max = max(layer.count_max, mark.count_max)
        if kind != 'mac' and x.numel():
            ones = self.ones(x, mark)
            layer.ones = _add(layer.ones, ones)
            layer.ops = _add(layer.ops, ones * (dense / x.numel()))
            layer.numel += x.numel()

    def _count_attention(self, attention: _Attention, role: str, spikes: torch.Tensor, mark) -> None:
        rate = attention.rates[role]
        ones = self.ones(spikes, mark)
        rate.ones = _add(rate.ones, ones)
        rate.rate_sum = _add(rate.rate_sum, ones / max(spikes.numel(), 1))
        rate.numel += spikes.numel()
        rate.calls += 1
        if role == 'q':  # Q spikes are [T, B, C, N...] or [T, B, N, C]
            T, B = spikes.shape[:2]
            C = attention.dim or spikes.shape[2]
            N = spikes.numel() // max(T * B * C, 1)
            d = C // attention.heads
            attention.shape = (T, N, d)
            attention.dense += T * B * attention.heads * N * d * d
        if attention not in self._order and all(r.calls for r in attention.rates.values()):
            self._order.append(attention)

    def on_unclassified(self, name: str, what: str, dense_ops: Optional[int]) -> None:
        entry = self._unclassified.setdefault((name, what), [0, 0])
        entry[0] += 1
        entry[1] = None if dense_ops is None or entry[1] is None else entry[1] + dense_ops

    # ---------------------------------------------------------------- results
    def report(self, e_mac_pj: float = E_MAC_PJ, e_ac_pj: float = E_AC_PJ,
               top1: Optional[float] = None, multispike: str = 'mac') -> EnergyReport:
        """Per-sample counts and energy of everything counted so far (one host sync), with layers on spike counts
        priced by the counting rule ``multispike`` ('mac' or 'ac', see the module docstring)."""
        if multispike not in NSPKS_MAX:
            raise ValueError(f"multispike must be one of {MULTISPIKE}, got {multispike!r}")
        if not self.samples:
            raise ValueError('no forward pass was counted: the batches were empty')
        # Read every device accumulator in one transfer.
        tensors, slots = [], []
        for entry in self._order:
            if isinstance(entry, _Layer):
                if entry.kind != 'mac':
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
        groups: Dict[str, str] = {}
        count_inputs: List[str] = []
        for entry in self._order:
            if isinstance(entry, _Layer):
                dense = entry.dense / S
                kind = entry.kind
                if kind == 'counts':
                    count_inputs.append(entry.name)
                    kind = 'ac' if entry.count_max <= NSPKS_MAX[multispike] else 'mac'
                if kind == 'mac':
                    rate, ops, pj = 1.0, dense, e_mac_pj
                else:
                    rate = host[(id(entry), 'ones')] / entry.numel if entry.numel else 0.0
                    ops, pj = host[(id(entry), 'ops')] / S, e_ac_pj
                layers.append(LayerEnergy(entry.name, kind, dense, rate, ops, ops * pj * 1e-9))
                groups[entry.name] = self._groups.get(entry.name, 'other')
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
                groups[f'{entry.name}.{suffix}'] = 'attention'
        unclassified = [Unclassified(name, what, calls, None if dense is None else dense / S)
                        for (name, what), (calls, dense) in self._unclassified.items()]
        return EnergyReport.from_layers(layers, samples=S, top1=top1, e_mac_pj=e_mac_pj, e_ac_pj=e_ac_pj,
                                        attention=attention_rates, rate_average=self.rate_average, groups=groups,
                                        multispike=multispike, count_inputs=count_inputs,
                                        unclassified=unclassified)
