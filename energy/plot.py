"""The report's figure: energy per operation, input firing rate per operation, Q/K/V firing rates per block."""
from typing import Optional

from .report import EnergyReport, mj, si

COLORS = {'mac': '#d95f02', 'ac': '#1b9e77'}


def plot_report(report: EnergyReport, path: str, title: Optional[str] = None) -> None:
    """Write the figure to ``path`` (PNG). Operations share one x axis in execution order."""
    import matplotlib
    matplotlib.use('Agg', force=False)
    import matplotlib.pyplot as plt

    layers = report.layers
    n = len(layers)
    x = list(range(n))
    names = [layer.name for layer in layers]
    colors = [COLORS[layer.kind] for layer in layers]
    rows = 3 if report.attention else 2
    fig, axes = plt.subplots(rows, 1, figsize=(max(8.0, 0.22 * n + 2.5), 3.2 * rows + 1.8),
                             gridspec_kw={'height_ratios': [3, 2, 2][:rows]}, constrained_layout=True)
    top1 = f', top-1 {report.top1:.2f}%' if report.top1 is not None else ''
    samples = f'{report.samples} sample{"s" if report.samples != 1 else ""}'
    fig.suptitle(f'{title + chr(10) if title else ""}{mj(report.energy_mj)} per sample: {si(report.mac_ops)} MAC, '
                 f'{si(report.ac_ops)} AC ({samples}{top1})', fontsize=11)

    ax = axes[0]
    ax.bar(x, [layer.energy_mj for layer in layers], color=colors)
    ax.set_ylabel('energy per sample (mJ)')
    ax.set_xticks(x, [''] * n)
    ax.set_xlim(-0.7, n - 0.3)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in COLORS.values()]
    ax.legend(handles, [f'MAC ({report.e_mac_pj} pJ, dense)', f'AC ({report.e_ac_pj} pJ x firing rate)'],
              loc='upper right', fontsize=8)
    ax.grid(axis='y', alpha=0.3)

    ax = axes[1]
    rates = [layer.firing_rate * 100 if layer.kind == 'ac' else 0 for layer in layers]
    top = max([1.0] + rates) * 1.1
    ax.bar(x, rates, color=[COLORS['ac']] * n)
    for i, layer in enumerate(layers):
        if layer.kind == 'mac':
            ax.text(i, 0.02 * top, 'dense', rotation=90, ha='center', va='bottom', fontsize=7, color=COLORS['mac'])
    ax.set_ylabel('input firing rate (%)')
    ax.set_ylim(0, top)
    ax.set_xticks(x, names, rotation=90, fontsize=7)
    ax.set_xlim(-0.7, n - 0.3)
    ax.grid(axis='y', alpha=0.3)

    if report.attention:
        ax = axes[2]
        blocks = list(range(len(report.attention)))
        width = 0.27
        for j, (role, color) in enumerate((('q', '#7570b3'), ('k', '#e7298a'), ('v', '#66a61e'))):
            ax.bar([b + (j - 1) * width for b in blocks],
                   [getattr(a, f'rate_{role}') * 100 for a in report.attention], width, label=role.upper(),
                   color=color)
        ax.set_xticks(blocks, [a.name for a in report.attention], fontsize=8)
        ax.set_ylabel('Q/K/V firing rate (%)')
        ax.set_ylim(0, max([1.0] + [100 * max(a.rate_q, a.rate_k, a.rate_v) * 1.15 for a in report.attention]))
        ax.legend(fontsize=8, ncol=3)
        ax.grid(axis='y', alpha=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)
