"""The energy report's figure: energy and input firing rate per operation, Q/K/V firing rates per block.

Readable for every model: on every Spikingformer the first convolution dominates, so the energy axis is logarithmic
(a linear one leaves the attention, projection and head bars as invisible slivers) and every bar carries its share
of the total. One unit throughout: the title's (mJ, µJ or nJ, whichever puts the total between 1 and 1000).
Operations are listed top to bottom in execution order, as horizontal bars so that every name reads without
rotation, and separated into their groups (tokenizer, each block's attention and MLP, head).
"""
from typing import List, Optional, Tuple

from .report import EnergyReport, energy_unit, mj, share, si

COLORS = {'mac': '#d95f02', 'ac': '#1b9e77'}
ROLE_COLORS = (('q', '#7570b3'), ('k', '#e7298a'), ('v', '#66a61e'))
GAP = 0.7  # blank rows between groups


def group_runs(names: List[str], groups: dict) -> List[Tuple[str, int, int]]:
    """Consecutive operations of the same group as ``(group, first, last)`` index runs, in order."""
    runs: List[Tuple[str, int, int]] = []
    for i, name in enumerate(names):
        group = groups.get(name, 'other')
        if runs and runs[-1][0] == group:
            runs[-1] = (group, runs[-1][1], i)
        else:
            runs.append((group, i, i))
    return runs


def _run_label(group: str, first_name: str) -> str:
    """'attention' -> 'block.0 attention' when the operation names carry the block (for a readable band label)."""
    if group in ('attention', 'MLP'):
        prefix = first_name.split('.attn')[0].split('.mlp')[0]
        if prefix != first_name:
            return f'{prefix}\n{group}'
    return group


def plot_report(report: EnergyReport, path: str, title: Optional[str] = None) -> None:
    """Write the figure to ``path`` (PNG)."""
    import matplotlib.pyplot as plt
    fig = energy_figure(report, title)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def energy_figure(report: EnergyReport, title: Optional[str] = None):
    """The figure (a matplotlib ``Figure``; its first two axes are the energy and the firing-rate panels)."""
    import matplotlib
    matplotlib.use('Agg', force=False)
    import matplotlib.pyplot as plt

    layers = report.layers
    names = [layer.name for layer in layers]
    runs = group_runs(names, report.groups)
    y, row = [], 0.0
    for r, (_, first, last) in enumerate(runs):
        row += GAP if r else 0.0
        for _ in range(first, last + 1):
            y.append(row)
            row += 1.0
    height = row
    factor, unit = energy_unit(report.energy_mj)
    values = [layer.energy_mj / factor for layer in layers]
    total = report.energy_mj or 1.0

    rows = 2 if report.attention else 1
    bars_in = 0.24 * height + 1.2
    fig = plt.figure(figsize=(11.0, bars_in + (2.6 if rows == 2 else 0) + 1.3))
    grid = fig.add_gridspec(rows, 2, width_ratios=[3, 2], height_ratios=[bars_in, 2.6][:rows], hspace=0.12,
                            wspace=0.04)
    top1 = f', top-1 {report.top1:.2f}%' if report.top1 is not None else ''
    samples = f'{report.samples} sample{"s" if report.samples != 1 else ""}'
    fig.suptitle(f'{title + chr(10) if title else ""}{mj(report.energy_mj)} per sample: {report.mac_ops:,.0f} MAC '
                 f'x {report.e_mac_pj} pJ + {si(report.ac_ops)} AC x {report.e_ac_pj} pJ ({samples}{top1})',
                 fontsize=11)

    # energy per operation, log scale, share on each bar
    ax = fig.add_subplot(grid[0, 0])
    positive = [v for v in values if v > 0]
    low = min(positive) / 4 if positive else 1e-3
    high = max(positive) * 30 if positive else 1.0
    ax.barh(y, [max(v - low, 0.0) for v in values], height=0.7, left=low,  # bars from the axis' left end to v
            color=[COLORS[layer.kind] for layer in layers])
    for yi, v, layer in zip(y, values, layers):
        ax.text(max(v, low) * 1.15, yi, f'{share(layer.energy_mj / total)}', va='center', fontsize=7)
    ax.set_xscale('log')
    ax.set_xlim(low, high)
    ax.set_ylim(height - 0.3, -0.7)
    ax.set_yticks(y, names, fontsize=7)
    ax.set_xlabel(f'energy per sample ({unit}, log scale); label: share of the total', fontsize=8)
    ax.tick_params(axis='x', labelsize=7)
    ax.grid(axis='x', alpha=0.3, which='major')
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in COLORS.values()]
    ax.legend(handles, [f'MAC ({report.e_mac_pj} pJ, dense)', f'AC ({report.e_ac_pj} pJ x firing rate)'],
              loc='lower left', bbox_to_anchor=(0, 1.0), ncol=2, fontsize=7, frameon=False)
    _group_bands(ax, runs, y, names)

    # input firing rate per operation
    ax = fig.add_subplot(grid[0, 1], sharey=ax)
    rates = [layer.firing_rate * 100 if layer.kind == 'ac' else 0 for layer in layers]
    top = max([1.0] + rates) * 1.25
    ax.barh(y, rates, height=0.7, color=COLORS['ac'])
    for yi, rate, layer in zip(y, rates, layers):
        label = 'dense' if layer.kind == 'mac' else f'{rate:.3g}%'
        ax.text(rate + 0.01 * top, yi, label, va='center', fontsize=7,
                color=COLORS['mac'] if layer.kind == 'mac' else 'black')
    ax.set_xlim(0, top)
    ax.set_xlabel('input firing rate (%)', fontsize=8)
    ax.tick_params(axis='y', labelleft=False)
    ax.tick_params(axis='x', labelsize=7)
    ax.grid(axis='x', alpha=0.3)
    _group_bands(ax, runs, y, names, labels=True)

    if report.attention:
        ax = fig.add_subplot(grid[1, :])
        blocks = list(range(len(report.attention)))
        width = 0.22
        for j, (role, color) in enumerate(ROLE_COLORS):
            rates = [getattr(a, f'rate_{role}') * 100 for a in report.attention]
            bars = ax.bar([b + (j - 1) * width for b in blocks], rates, width, label=role.upper(), color=color)
            ax.bar_label(bars, fmt='%.3g', fontsize=7, padding=1)
        ax.set_xticks(blocks, [a.name for a in report.attention], fontsize=8)
        pad = max(0.0, (4 - len(blocks)) / 2)  # few blocks: narrow bars, centred
        ax.set_xlim(-0.6 - pad, len(blocks) - 0.4 + pad)
        ax.set_ylabel('Q/K/V firing rate (%)', fontsize=8)
        ax.set_ylim(0, max([1.0] + [100 * max(a.rate_q, a.rate_k, a.rate_v) * 1.25 for a in report.attention]))
        ax.legend(fontsize=8, ncol=3, loc='upper right')
        ax.grid(axis='y', alpha=0.3)
    fig.subplots_adjust(left=0.25, right=0.9, top=1 - 1.05 / fig.get_figheight(), bottom=0.5 / fig.get_figheight())
    return fig


def _group_bands(ax, runs, y, names, labels: bool = False) -> None:
    """Shade every other group and, with ``labels``, name each group at the right edge."""
    for r, (group, first, last) in enumerate(runs):
        if r % 2 == 0:
            ax.axhspan(y[first] - 0.5, y[last] + 0.5, color='0.93', zorder=0)
        if labels:
            ax.text(1.01, (y[first] + y[last]) / 2, _run_label(group, names[first]), transform=ax.get_yaxis_transform(),
                    va='center', ha='left', fontsize=7)
