"""Spike recording: every neuron's firing rates, firing maps of the tokenizer and attention maps, in one pass.

``record_spikes(model, batches)`` evaluates the model once with forward hooks (:class:`energy.hooks.SpikeHooks`,
the same machinery and spike provenance as the energy estimate) and returns a :class:`SpikeReport`:

* per neuron (by module name, in execution order): the firing rate per time step and overall, the fraction of
  silent channels (no spike on any evaluated sample, time step and position) and of always-firing channels (a spike
  on every one), and the counted layers that read its spikes. Channels are dimension 2 of the multi-step neuron
  output ``[T, B, C, ...]``; "positions" are the dimensions after it (``H x W``, or ``N`` tokens).
  All rates pool every evaluated element (``ones / elements``), so they do not depend on how the data were batched.
  A layer that reads a neuron's output itself (``read_by``) has exactly that neuron's overall rate as its input
  firing rate in the energy report; a layer after max pooling (``read_after_pooling_by``: the pooled tokenizer
  stages) sees a higher rate by construction (the max of 0/1 values fires where any input fired);
* firing maps of the first ``samples`` samples: the input and, for each neuron of the tokenizer (a
  ``SpikingTokenizer``; every neuron with a spatial ``[T, B, C, H, W]`` output if the model has none), the fraction
  of channels firing at each position, per time step;
* attention maps of the first sample: for each ``SpikingSelfAttention``, ``Q K^T`` per head from the Q and K spikes
  of its ``q_lif`` and ``k_lif`` (``[T, B, C, N]``, channel ``c`` in head ``c // (C / heads)``), averaged over time
  steps (entry ``(i, j)``: in how many of the head's ``d`` channels query token ``i`` and key token ``j`` both fire),
  and that sample's Q, K and V firing rates per head. The model is not changed to get them.

Counts are exact (0/1 values summed in float32 over positions, then in float64) and stay on the device until the
report is built.
"""
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from models.layers import SpikingSelfAttention

from .counter import layer_groups
from .estimate import evaluate_hooked
from .hooks import SpikeHooks, SpikeMark
from .report import percent


@dataclass
class NeuronSpikes:
    """Firing statistics of one neuron module over all evaluated samples (rates are fractions, 0-1)."""
    name: str
    group: str  # 'tokenizer', 'attention', 'MLP' or 'other'
    time_steps: int
    channels: int
    positions: int
    rate: float
    rate_per_step: List[float]
    silent_channels: float
    always_firing_channels: float
    read_by: List[str] = field(default_factory=list)
    read_after_pooling_by: List[str] = field(default_factory=list)
    attention: Optional[str] = None  # for q_lif, k_lif, v_lif: the attention whose r_q, r_k or r_v this is
    role: Optional[str] = None  # 'q', 'k' or 'v'


@dataclass
class AttentionSample:
    """One spiking self-attention on the first sample: ``qk`` is ``[heads, N, N]``, ``Q K^T`` per head averaged over
    the T time steps; ``rate_q/k/v`` are that sample's firing rates per head."""
    name: str
    heads: int
    tokens: int
    head_dim: int
    rate_q: List[float]
    rate_k: List[float]
    rate_v: List[float]
    qk: Optional[torch.Tensor] = None


@dataclass
class FiringMap:
    """Per recorded sample and time step, the fraction of ``name``'s channels firing at each position:
    ``maps`` is ``[samples, T, H, W]``."""
    name: str
    maps: torch.Tensor


@dataclass
class SpikeReport:
    """Everything :func:`record_spikes` measured. ``inputs`` are the recorded samples' model inputs (images
    ``[S, C, H, W]`` or event frames ``[S, T, C, H, W]``); tensors are left out of :meth:`to_dict`."""
    samples: int
    batches: int
    top1: Optional[float]
    neurons: List[NeuronSpikes]
    attention: List[AttentionSample] = field(default_factory=list)
    maps: List[FiringMap] = field(default_factory=list)
    inputs: Optional[torch.Tensor] = None

    def neuron(self, name: str) -> NeuronSpikes:
        return next(n for n in self.neurons if n.name == name)

    def to_dict(self) -> dict:
        attention = [{k: v for k, v in asdict(a).items() if k != 'qk'} for a in self.attention]
        return dict(samples=self.samples, batches=self.batches, top1=self.top1,
                    neurons=[asdict(n) for n in self.neurons], attention_sample=attention,
                    firing_maps=[m.name for m in self.maps], map_samples=len(self.inputs) if self.inputs is not None
                    else 0)

    def to_markdown(self, title: str = 'Spikes', details: Sequence[str] = ()) -> str:
        """A Markdown page: one row per neuron, then the first sample's Q/K/V rates per head."""
        lines = [f'# {title}', '']
        lines += [f'- {d}' for d in details]
        top1 = f', top-1 {self.top1:.2f}%' if self.top1 is not None else ''
        lines += [f'- {self.samples} samples{top1}; rates pool every sample, time step, '
                  f'channel and position; rates to 4 significant figures', '',
                  '## Firing rate per neuron', '',
                  'In network order. Silent: channels that never fired; always: channels that fired at every sample, '
                  'time step and position. "read by": the layers whose input is these spikes (their input firing '
                  'rate in the energy report is this rate; † after max pooling, which raises it); "products (r_q)": '
                  'the Q/K/V rate of the attention products in the energy report.', '',
                  '| # | neuron | group | channels x positions | rate | per time step | silent | always | read by |',
                  '|---|---|---|---|---|---|---|---|---|']
        for i, n in enumerate(self.neurons):
            steps = ' / '.join(percent(r) for r in n.rate_per_step)
            readers = ', '.join(n.read_by + [f'{r} †' for r in n.read_after_pooling_by])
            if n.role:
                readers = f'{n.attention} products (r_{n.role})' + (f', {readers}' if readers else '')
            lines.append(f'| {i} | {n.name} | {n.group} | {n.channels} x {n.positions} | {percent(n.rate)} | {steps} '
                         f'| {percent(n.silent_channels)} | {percent(n.always_firing_channels)} | {readers or "-"} |')
        lines.append('')
        if self.attention:
            lines += ['## Attention of the first sample', '',
                      'Firing rates of Q, K and V per head (head 0, 1, ...), on the first sample only.', '',
                      '| attention | heads | tokens N | d | r_q per head | r_k per head | r_v per head |',
                      '|---|---|---|---|---|---|---|']
            for a in self.attention:
                per_head = [' / '.join(percent(r) for r in rates) for rates in (a.rate_q, a.rate_k, a.rate_v)]
                lines.append(f'| {a.name} | {a.heads} | {a.tokens} | {a.head_dim} | ' + ' | '.join(per_head) + ' |')
            lines.append('')
        return '\n'.join(lines)


@dataclass(eq=False)
class _Neuron:
    name: str
    group: str
    spatial: bool
    ones: Optional[torch.Tensor] = None  # [T, C] float64 on the device
    per_cell: int = 0  # elements per (time step, channel) seen: sum over calls of B x positions
    positions: int = 1
    maps: List[torch.Tensor] = field(default_factory=list)  # [T, s, H, W] per batch with recorded samples
    readers: Dict[str, bool] = field(default_factory=dict)  # counted layer -> reads the output itself (not pooled)
    attention: Optional[str] = None
    role: Optional[str] = None


class SpikeRecorder(SpikeHooks):
    """Context manager that records spikes of every forward pass of ``model`` (see the module docstring).

    >>> with SpikeRecorder(model, samples=2) as recorder:
    ...     for x, _ in loader:
    ...         model(x)
    >>> report = recorder.report()
    """

    def __init__(self, model: nn.Module, samples: int = 2):
        super().__init__(model)
        self.keep = max(int(samples), 0)
        self._neurons: Dict[str, _Neuron] = {}
        self._groups: Dict[str, str] = {}
        self._spatial_only_tokenizer = False
        self._roles: Dict[int, tuple] = {}  # id(q_lif / k_lif / v_lif) -> (attention name, heads, role)
        self._attention: Dict[str, dict] = {}  # name -> {'heads': h, 'q': [T, C, N], 'k': ..., 'v': ...}
        self._inputs: List[torch.Tensor] = []
        self._take = 0  # samples of the current batch to record maps of

    def setup(self, names: Dict[nn.Module, str]) -> None:
        self._groups = layer_groups(self.model, names)
        self._spatial_only_tokenizer = 'tokenizer' in self._groups.values()
        for module, name in names.items():
            if isinstance(module, SpikingSelfAttention):
                for role, lif in (('q', module.q_lif), ('k', module.k_lif), ('v', module.v_lif)):
                    self._roles[id(lif)] = (name or 'attn', module.num_heads, role)

    def on_input(self, x) -> None:
        kept = sum(len(t) for t in self._inputs)
        batch = len(x) if isinstance(x, torch.Tensor) and x.dim() > 0 else 0
        self._take = min(self.keep - kept, batch)
        if self._take > 0:
            self._inputs.append(x[:self._take].detach().float().cpu())

    def on_spikes(self, name: str, module: nn.Module, spikes: torch.Tensor, mark: Optional[SpikeMark]) -> None:
        if spikes.dim() < 2:
            return
        entry = self._neurons.get(name)
        if entry is None:
            group = self._groups.get(name, 'other')
            spatial = group == 'tokenizer' or not self._spatial_only_tokenizer
            entry = self._neurons[name] = _Neuron(name, group, spatial)
            entry.attention, _, entry.role = self._roles.get(id(module), (None, None, None))
        T, B = spikes.shape[:2]
        cells = spikes.reshape(T, B, spikes.shape[2] if spikes.dim() > 2 else 1, -1)
        # exact and without a float64 copy of the spikes: a float32 sum over positions is exact below 2^24 of them
        ones = cells.sum(dim=3, dtype=torch.float32).sum(dim=1, dtype=torch.float64)
        entry.ones = ones if entry.ones is None else entry.ones.add_(ones)
        entry.positions = cells.shape[3]
        entry.per_cell += B * cells.shape[3]
        if entry.spatial and self._take > 0 and spikes.dim() == 5:
            entry.maps.append(spikes[:, :self._take].float().mean(2).cpu())
        role = self._roles.get(id(module))
        if role is not None and self.batches == 1 and spikes.dim() == 4:
            attention, heads, kind = role
            self._attention.setdefault(attention, {'heads': heads})[kind] = spikes[:, 0].float().cpu()

    def on_layer(self, name: str, module: nn.Module, x: torch.Tensor, output: torch.Tensor,
                 mark: Optional[SpikeMark]) -> None:
        if mark is not None and mark.count_max == 1 and mark.source in self._neurons:
            readers = self._neurons[mark.source].readers
            readers[name] = readers.get(name, True) and mark.direct

    def report(self, top1: Optional[float] = None) -> SpikeReport:
        if not self.samples:
            raise ValueError('no forward pass was recorded: the batches were empty')
        neurons, maps = [], []
        for entry in self._neurons.values():
            ones = entry.ones.cpu()
            T, C = ones.shape
            per_channel = ones.sum(0)
            neurons.append(NeuronSpikes(
                name=entry.name, group=entry.group, time_steps=T, channels=C, positions=entry.positions,
                rate=(ones.sum() / (T * C * entry.per_cell)).item(),
                rate_per_step=(ones.sum(1) / (C * entry.per_cell)).tolist(),
                silent_channels=(per_channel == 0).double().mean().item(),
                always_firing_channels=(per_channel == T * entry.per_cell).double().mean().item(),
                read_by=[r for r, direct in entry.readers.items() if direct],
                read_after_pooling_by=[r for r, direct in entry.readers.items() if not direct],
                attention=entry.attention, role=entry.role))
            if entry.maps:
                maps.append(FiringMap(entry.name, torch.cat(entry.maps, dim=1).transpose(0, 1)))
        attention = []
        for name, captured in self._attention.items():
            if not all(role in captured for role in 'qkv'):
                continue
            heads = captured['heads']
            q, k, v = (captured[role] for role in 'qkv')  # [T, C, N]
            T, C, N = q.shape
            d = C // heads
            q, k, v = (t.reshape(T, heads, d, N) for t in (q, k, v))
            qk = (q.transpose(-2, -1) @ k).mean(0)  # [heads, N, N]
            attention.append(AttentionSample(name, heads, N, d, *[t.mean((0, 2, 3)).tolist() for t in (q, k, v)],
                                             qk=qk))
        inputs = torch.cat(self._inputs) if self._inputs else None
        return SpikeReport(samples=self.samples, batches=self.batches, top1=top1, neurons=neurons,
                           attention=attention, maps=maps, inputs=inputs)


def record_spikes(model: nn.Module, batches, samples: int = 2, device: Optional[torch.device] = None,
                  autocast_dtype: Optional[torch.dtype] = None) -> SpikeReport:
    """Run ``model`` in eval mode over ``batches`` (as :func:`energy.estimate_energy`) and record its spikes;
    ``samples``: how many samples (the first ones) get firing maps. The model's outputs are unchanged."""
    recorder = SpikeRecorder(model, samples=samples)
    top1 = evaluate_hooked(model, batches, recorder, device=device, autocast_dtype=autocast_dtype)
    return recorder.report(top1=top1)
