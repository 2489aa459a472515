"""Energy estimates without a data set: synthetic inputs through a checkpoint, and the architecture-only report.

**Synthetic inputs** (``scripts/energy_report.py --input random|zeros --samples N --seed S``) have the model's input
shape (:func:`input_shape`): images ``[N, C, H, W]`` or event frames ``[N, T, 2, H, W]``.

* ``random`` images are standard normal per element: what an image looks like after the data set's mean/std
  normalisation (mean 0, variance 1), with no spatial structure. Random event frames are Poisson counts with mean
  :data:`EVENT_MEAN` events per pixel, polarity and frame (integer counts, like the prepared DVS frames; sparse as
  real recordings are). The published calculator's random mode fills the input with ``new_empty`` (uninitialised
  memory), which is neither reproducible nor bounded; these are both, from ``--seed``.
* ``zeros`` is an all-zero input: the neurons then fire only from the BatchNorm biases.

Firing rates on such inputs are not those of real data: the report says so in its title. The dense operation counts
and the MACs of the first layer and the head do not depend on the input at all.

**Architecture-only** (``--no-checkpoint``, :func:`architecture_counts` and :func:`energy_at_rates`): one forward
pass of the untrained model on a zero input gives every counted layer's dense operations and its kind (MAC on the
input or the head, AC on spikes, or spike counts with their bound), from shapes and structure only. The energy is
then a function of an *assumed* firing rate ``r``, the same for every neuron: an AC layer on spikes costs
``dense x r``, the attention products ``dense x 2r`` (``min(r_k, r_v) + r_q``), a layer on counts of at most ``n``
spikes ``dense x n r`` ACs under the ``ac`` rule (``n`` spike tensors at rate ``r`` each) or ``dense`` MACs under
``mac``. Real networks fire unevenly (tokenizer stages 5-80%, attention 1-30% in the published models): the numbers
are a scale, labelled as assumed wherever they are shown.
"""
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Sequence

import torch
from torch import nn

from .constants import E_AC_PJ, E_MAC_PJ
from .counter import NSPKS_MAX, EnergyCounter, _Layer
from .report import DIGITS, Unclassified, mj, si

INPUTS = ('data', 'random', 'zeros')
EVENT_MEAN = 0.25  # mean events per pixel, polarity and frame of --input random for event data
EVENT_CHANNELS = 2  # ON/OFF polarity


def input_shape(model: nn.Module, img_size: int, events: bool) -> tuple:
    """One sample's input shape for ``model``: ``(C, H, W)`` images, or ``(T, 2, H, W)`` event frames."""
    if events:
        return (int(model.T), int(getattr(model, 'in_channels', EVENT_CHANNELS)), img_size, img_size)
    return (int(getattr(model, 'in_channels', 3)), img_size, img_size)


def synthetic_batches(shape: Sequence[int], kind: str, samples: int, batch_size: int, seed: int,
                      events: bool) -> List[torch.Tensor]:
    """``samples`` synthetic inputs of per-sample ``shape`` in batches of at most ``batch_size`` (see the module
    docstring for the distributions). The same ``seed`` gives the same tensors on every machine (CPU generator)."""
    if kind not in ('random', 'zeros'):
        raise ValueError(f"kind must be 'random' or 'zeros', got {kind!r}")
    generator = torch.Generator().manual_seed(int(seed))
    batches, left = [], int(samples)
    while left > 0:
        n = min(left, int(batch_size))
        size = (n, *shape)
        if kind == 'zeros':
            x = torch.zeros(size)
        elif events:
            x = torch.poisson(torch.full(size, EVENT_MEAN), generator=generator)
        else:
            x = torch.randn(size, generator=generator)
        batches.append(x)
        left -= n
    return batches


@dataclass
class LayerCount:
    """One counted operation of the architecture: ``kind`` 'mac' (model input or head), 'ac' (spikes), 'counts'
    (spike counts of at most ``count_max`` spikes) or 'product' (an attention product); dense ops per sample."""
    name: str
    kind: str
    dense_ops: float
    count_max: int = 1


@dataclass
class ArchitectureCounts:
    """Dense operations per layer of one architecture, from shapes only (no weights, no data)."""
    layers: List[LayerCount]
    unclassified: List[Unclassified] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def architecture_counts(model: nn.Module, sample: torch.Tensor) -> ArchitectureCounts:
    """Every counted layer's kind and dense operations per sample, from one pass of ``model`` on ``sample`` (a
    batch, normally of one zero input)."""
    counter = EnergyCounter(model)
    was_training = model.training
    model.eval()
    try:
        with counter, torch.no_grad():
            model(sample)
    finally:
        model.train(was_training)
    report = counter.report()  # the products' dense counts, and the unclassified operations
    S = counter.samples
    layers = []
    products = {layer.name: layer for layer in report.layers if layer.name.endswith(('.product_kv', '.product_q'))}
    for entry in counter._order:
        if isinstance(entry, _Layer):
            layers.append(LayerCount(entry.name, entry.kind, entry.dense / S, entry.count_max))
        else:
            for suffix in ('product_kv', 'product_q'):
                name = f'{entry.name}.{suffix}'
                layers.append(LayerCount(name, 'product', products[name].dense_ops))
    return ArchitectureCounts(layers, report.unclassified)


@dataclass
class RateEstimate:
    """MACs, ACs and energy per sample at one assumed firing rate, under one counting rule."""
    rate: float
    multispike: str
    mac_ops: float
    ac_ops: float
    energy_mj: float


def energy_at_rates(counts: ArchitectureCounts, rates: Sequence[float], multispike: str = 'mac',
                    e_mac_pj: float = E_MAC_PJ, e_ac_pj: float = E_AC_PJ) -> List[RateEstimate]:
    """The energy per sample at each assumed firing rate (the module docstring gives the rule)."""
    if multispike not in NSPKS_MAX:
        raise ValueError(f"multispike must be one of {tuple(NSPKS_MAX)}, got {multispike!r}")
    estimates = []
    for r in rates:
        mac = ac = 0.0
        for layer in counts.layers:
            if layer.kind == 'mac' or (layer.kind == 'counts' and layer.count_max > NSPKS_MAX[multispike]):
                mac += layer.dense_ops
            elif layer.kind == 'counts':
                ac += layer.dense_ops * layer.count_max * r
            elif layer.kind == 'product':
                ac += layer.dense_ops * r  # each product: its own rate, min(r_k, r_v) or r_q, all r here
            else:
                ac += layer.dense_ops * r
        estimates.append(RateEstimate(r, multispike, mac, ac, (mac * e_mac_pj + ac * e_ac_pj) * 1e-9))
    return estimates


def parse_rates(text: str) -> List[float]:
    """``--assume-rate``: one rate (``0.15``), a list (``0.05,0.1,0.2``) or a sweep ``START:STOP:COUNT``
    (``0.05:0.3:6``: 6 evenly spaced rates, both ends included). Rates are fractions in (0, 1]."""
    text = str(text).strip()
    try:
        if ':' in text:
            start, stop, count = text.split(':')
            start, stop, count = float(start), float(stop), int(count)
            if count < 1:
                raise ValueError
            rates = [start] if count == 1 else [start + (stop - start) * i / (count - 1) for i in range(count)]
        else:
            rates = [float(part) for part in text.split(',') if part.strip()]
    except ValueError:
        raise ValueError(f'--assume-rate {text!r}: expected a rate (0.15), a list (0.05,0.1,0.2) or a sweep '
                         f'START:STOP:COUNT (0.05:0.3:6)') from None
    bad = [r for r in rates if not 0 < r <= 1]
    if not rates or bad:
        raise ValueError(f'--assume-rate {text!r}: firing rates are fractions in (0, 1] (0.15 is 15%); got '
                         f'{", ".join(map(str, bad)) or "none"}')
    return rates


def architecture_markdown(counts: ArchitectureCounts, estimates: Dict[str, List[RateEstimate]], title: str,
                          details: Sequence[str] = ()) -> str:
    """The architecture-only report: dense operations per layer, then energy at each assumed rate, per rule."""
    lines = [f'# {title}', '']
    lines += [f'- {d}' for d in details]
    lines += ['- **no checkpoint and no data: every firing rate below is ASSUMED**, the same for every neuron; real '
              'networks fire unevenly, so read these as a scale, not as a measurement',
              f'- counts per sample; numbers to {DIGITS} significant figures (MACs exactly)', '',
              '## Energy at assumed firing rates', '',
              '| assumed rate | rule | MAC ops | AC ops | energy |', '|---|---|---|---|---|']
    for rule, rows in estimates.items():
        for e in rows:
            lines.append(f'| {100 * e.rate:.{DIGITS}g}% (assumed) | {rule} | {e.mac_ops:,.0f} | {si(e.ac_ops)} | '
                         f'{mj(e.energy_mj)} |')
    lines += ['', '## Dense operations per layer', '',
              'Kind: MAC (model input, head), AC (on spikes: costs dense x rate), counts <= n (on sums of n spike '
              'tensors: MACs under rule `mac`, dense x n x rate ACs under rule `ac`), product (attention product: '
              'dense x rate).', '', '| # | operation | kind | dense ops |', '|---|---|---|---|']
    for i, layer in enumerate(counts.layers):
        kind = f'counts <= {layer.count_max}' if layer.kind == 'counts' else layer.kind.upper() \
            if layer.kind in ('mac', 'ac') else layer.kind
        lines.append(f'| {i} | {layer.name} | {kind} | {layer.dense_ops:,.0f} |')
    lines.append('')
    if counts.unclassified:
        lines += ['## Not counted', '', '| module | operation | calls |', '|---|---|---|']
        lines += [f'| {u.name or "(model)"} | {u.what} | {u.calls} |' for u in counts.unclassified]
        lines.append('')
    return '\n'.join(lines)
