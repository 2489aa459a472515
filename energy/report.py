"""The energy report: per-sample totals and one entry per counted operation, as a dataclass, JSON and Markdown."""
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence

from .constants import E_AC_PJ, E_MAC_PJ
from .paper import PaperRow


DIGITS = 4  # every measured number in the reports: 4 significant figures (exact integer counts are written out)


def si(value: float, unit: str = '', digits: int = DIGITS) -> str:
    """``value`` with an SI prefix (k, M, G, T) and ``digits`` significant digits: ``si(3.4733e8) == '347.3 M'``."""
    for factor, prefix in ((1e12, 'T'), (1e9, 'G'), (1e6, 'M'), (1e3, 'k')):
        if abs(value) >= factor:
            return f'{value / factor:.{digits}g} {prefix}{unit}'.rstrip()
    return f'{value:.{digits}g} {unit}'.rstrip()


ENERGY_UNITS = ((1.0, 'mJ'), (1e-3, 'µJ'), (1e-6, 'nJ'), (1e-9, 'pJ'))


def energy_unit(value_mj: float):
    """``(factor, unit)`` for showing the energy ``value_mj`` (in mJ) as ``value_mj / factor`` between 1 and 1000
    (pJ below): ``energy_unit(4.1e-4) == (1e-6, 'nJ')``."""
    for factor, unit in ENERGY_UNITS:
        if abs(value_mj) >= factor:
            return factor, unit
    return ENERGY_UNITS[-1]


def mj(value: float, digits: int = DIGITS) -> str:
    """An energy given in mJ, in the unit that suits it: ``mj(13.68) == '13.68 mJ'``, ``mj(2.5e-4) == '250 nJ'``."""
    if not value:
        return '0 mJ'
    factor, unit = energy_unit(value)
    return f'{value / factor:.{digits}g} {unit}'


def percent(fraction: float, digits: int = DIGITS) -> str:
    """A rate (0-1) in percent to ``digits`` significant figures: ``percent(0.08203) == '8.203%'``."""
    return f'{100 * fraction:.{digits}g}%'


def share(fraction: float) -> str:
    """A share of a total to 0.1%, and '<0.1%' (not '0.0%') when it is not zero but rounds to it."""
    text = f'{fraction:.1%}'
    return '<0.1%' if fraction and text in ('0.0%', '-0.0%') else text


@dataclass
class LayerEnergy:
    """One counted operation, per sample.

    ``kind`` is 'mac' (real-valued input, counted dense: ``firing_rate`` is 1 by convention) or 'ac' (spike input).
    ``firing_rate`` is the fraction of ones in the input over all evaluated samples (for the attention products:
    ``min(r_k, r_v)`` for ``K^T V`` and ``r_q`` for ``Q (K^T V)``). ``ops = dense_ops * firing_rate`` up to the
    per-batch summation of the published rule (identical when every batch has the same shapes).
    """
    name: str
    kind: str
    dense_ops: float
    firing_rate: float
    ops: float
    energy_mj: float


@dataclass
class Unclassified:
    """An operation the estimator could not classify, left out of the totals: ``name`` is the innermost module
    running it ('' for the model's own forward), ``what`` the function (``matmul()``, ``conv2d()``, ...) or ``module
    <Type> with parameters``; ``calls`` over the whole pass; ``dense_ops`` per sample when the shapes give it."""
    name: str
    what: str
    calls: int
    dense_ops: Optional[float]


@dataclass
class AttentionRates:
    """Firing rates of one spiking self-attention's Q, K and V neurons and the shape of its products."""
    name: str
    heads: int
    T: int
    tokens: int
    head_dim: int
    rate_q: float
    rate_k: float
    rate_v: float


@dataclass
class EnergyReport:
    """Per-sample operation counts and energy, averaged over ``samples`` evaluated samples (docs/recipe.md section 6).

    ``energy_mj = (e_mac_pj * mac_ops + e_ac_pj * ac_ops) * 1e-9``; ``top1`` is in percent, ``None`` without
    targets. ``groups`` maps each operation's name to 'tokenizer', 'attention', 'MLP', 'head' or 'other' (for the
    figure; see :func:`energy.counter.layer_groups`). ``multispike`` is the counting rule for inputs of spike counts
    ('mac' or 'ac', :mod:`energy.counter`), ``count_inputs`` the layers whose input is spike counts, and
    ``unclassified`` what was not counted (:class:`Unclassified`).
    """
    samples: int
    mac_ops: float
    ac_ops: float
    energy_mj: float
    top1: Optional[float]
    layers: List[LayerEnergy]
    attention: List[AttentionRates] = field(default_factory=list)
    e_mac_pj: float = E_MAC_PJ
    e_ac_pj: float = E_AC_PJ
    rate_average: str = 'samples'
    groups: Dict[str, str] = field(default_factory=dict)
    multispike: str = 'mac'
    count_inputs: List[str] = field(default_factory=list)
    unclassified: List[Unclassified] = field(default_factory=list)

    @classmethod
    def from_layers(cls, layers: Sequence[LayerEnergy], samples: int, top1: Optional[float], e_mac_pj: float,
                    e_ac_pj: float, attention: Sequence[AttentionRates] = (), rate_average: str = 'samples',
                    groups: Optional[Dict[str, str]] = None, multispike: str = 'mac',
                    count_inputs: Sequence[str] = (), unclassified: Sequence[Unclassified] = ()) -> 'EnergyReport':
        mac = sum(layer.ops for layer in layers if layer.kind == 'mac')
        ac = sum(layer.ops for layer in layers if layer.kind == 'ac')
        return cls(samples=samples, mac_ops=mac, ac_ops=ac, energy_mj=(mac * e_mac_pj + ac * e_ac_pj) * 1e-9,
                   top1=top1, layers=list(layers), attention=list(attention), e_mac_pj=e_mac_pj, e_ac_pj=e_ac_pj,
                   rate_average=rate_average, groups=dict(groups or {}), multispike=multispike,
                   count_inputs=list(count_inputs), unclassified=list(unclassified))

    def rule_lines(self) -> List[str]:
        """The counting rule and the layers on spike counts, in words (none for a model without spike counts
        under the default rule, so a Spikingformer report reads as before the rules existed)."""
        if self.multispike == 'mac' and not self.count_inputs:
            return []
        price = ('their dense operations as MACs (rule `mac`, the published calculator\'s default Nspks_max = 1)'
                 if self.multispike == 'mac' else 'dense operations x mean count as ACs when the count is at most 30 '
                 '(rule `ac`, the published calculator\'s Nspks_max = 30)')
        counts = ', '.join(f'`{n}`' for n in self.count_inputs) or 'none'
        return [f'layers on spike counts (sums of spikes): {counts}; they cost {price}']

    def unclassified_lines(self) -> List[str]:
        """A Markdown section listing what was not counted ([] when everything was)."""
        if not self.unclassified:
            return []
        lines = ['## Not counted', '', 'Operations the estimator could not classify; they are **not** in the totals '
                 'above. Count them by hand, or build them from convolutions, linears and neurons.', '',
                 '| module | operation | calls | dense ops per sample |', '|---|---|---|---|']
        for u in self.unclassified:
            dense = si(u.dense_ops) if u.dense_ops is not None else '?'
            lines.append(f'| {u.name or "(model)"} | {u.what} | {u.calls} | {dense} |')
        return lines + ['']

    def to_dict(self) -> dict:
        return asdict(self)

    def to_markdown(self, title: str = 'Energy estimate', paper: Optional[PaperRow] = None,
                    details: Sequence[str] = ()) -> str:
        """A Markdown page: totals, the paper's numbers beside ours (when ``paper`` is given), Q/K/V firing rates
        per block and the per-layer table. ``details`` are extra lines placed under the title (config, data)."""
        lines = [f'# {title}', '']
        lines += [f'- {d}' for d in list(details) + self.rule_lines()]
        lines += [f'- samples: {self.samples}; E_MAC = {self.e_mac_pj} pJ, E_AC = {self.e_ac_pj} pJ (45 nm); '
                  f'counts and energy are per sample',
                  f'- numbers to {DIGITS} significant figures (the MAC count exactly), shares to 0.1%', '']
        lines += ['## Totals', '', '| | ours |' + (' paper |' if paper else ''),
                  '|---|---|' + ('---|' if paper else '')]

        def row(label, ours, theirs=None):
            return f'| {label} | {ours} |' + (f' {theirs if theirs is not None else "-"} |' if paper else '')

        top1 = f'{self.top1:.2f}%' if self.top1 is not None else '-'
        lines.append(row('top-1', top1, f'{paper.top1:.2f}%' if paper and paper.top1 is not None else None))
        lines.append(row('MAC ops', f'{self.mac_ops:,.0f} ({si(self.mac_ops)})',
                         f'{paper.mac_ops:,.0f}' if paper and paper.mac_ops else None))
        lines.append(row('AC ops', si(self.ac_ops),
                         si(paper.ac_ops) if paper and paper.ac_ops else None))
        lines.append(row('energy (MAC + AC)', mj(self.energy_mj),
                         mj(paper.energy_mj) if paper else None))
        if paper:
            lines += ['', f'Paper: {paper.source}.']
            if paper.note:
                lines += ['', paper.note]
        lines.append('')

        if self.attention:
            pooled = 'the mean of per-batch rates (published rule)' if self.rate_average == 'batches' else 'all samples'
            lines += ['## Q/K/V firing rates per block', '', f'Rates over {pooled}.', '',
                      '| attention | heads | T | tokens N | d | r_q | r_k | r_v |', '|---|---|---|---|---|---|---|---|']
            for a in self.attention:
                lines.append(f'| {a.name} | {a.heads} | {a.T} | {a.tokens} | {a.head_dim} | {percent(a.rate_q)} | '
                             f'{percent(a.rate_k)} | {percent(a.rate_v)} |')
            lines.append('')

        total = self.energy_mj or 1.0
        factor, unit = energy_unit(total)
        lines += ['## Per layer', '', 'In execution order; `product_kv` is `K^T V` (rate min(r_k, r_v)), `product_q` '
                  'is `Q (K^T V)` (rate r_q).', '',
                  f'| # | operation | kind | dense ops | input firing rate | ops | energy ({unit}) | share |',
                  '|---|---|---|---|---|---|---|---|']
        for i, layer in enumerate(self.layers):
            rate = percent(layer.firing_rate) if layer.kind == 'ac' else 'dense'
            energy = f'{layer.energy_mj / factor:.{DIGITS}g}'
            lines.append(f'| {i} | {layer.name} | {layer.kind.upper()} | {si(layer.dense_ops)} | {rate} | '
                         f'{si(layer.ops)} | {energy} | {share(layer.energy_mj / total)} |')
        lines.append('')
        lines += self.unclassified_lines()
        return '\n'.join(lines)
