"""The spike report's figures: firing rates per neuron and time step, tokenizer firing maps, attention maps.

Each figure is meant to be read at a glance: names in network order top to bottom, every heat map with its colour
scale, values printed where they fit. Images are shown min-max scaled; event frames as ON (red) and OFF (blue)
counts on black, scaled to the sample's 99th percentile of non-zero counts.
"""
import textwrap
from typing import Optional

import torch

from .plot import ROLE_COLORS, group_runs
from .spikes import SpikeReport

DPI = 90


def _plt():
    import matplotlib
    matplotlib.use('Agg', force=False)
    import matplotlib.pyplot as plt
    return plt


def _short(name: str) -> str:
    return name.replace('patch_embed.', '')


def _title(fig, title: Optional[str], text: str, fontsize: int = 9) -> None:
    """The figure title, wrapped to the figure's width."""
    width = max(30, int(fig.get_figwidth() * 110 / fontsize))
    lines = ([title] if title else []) + textwrap.wrap(text, width)
    fig.suptitle('\n'.join(lines), fontsize=fontsize)


def _block(name: str, group: str) -> str:
    """The run a neuron belongs to: the tokenizer, or one block's attention or MLP."""
    if group in ('attention', 'MLP'):
        return group + name.split('.attn')[0].split('.mlp')[0]
    return group


def plot_firing_rates(report: SpikeReport, path: str, title: Optional[str] = None) -> None:
    """Heat map neuron x time step of firing rates (%), with the overall rate and silent channels beside it."""
    plt = _plt()
    neurons = report.neurons
    n = len(neurons)
    T = max(len(x.rate_per_step) for x in neurons)
    rates = torch.full((n, T), float('nan'))
    for i, x in enumerate(neurons):
        rates[i, :len(x.rate_per_step)] = torch.tensor(x.rate_per_step) * 100
    vmax = max(1.0, float(torch.nan_to_num(rates).max()))
    fig, (ax, bars) = plt.subplots(1, 2, figsize=(2.4 + 0.55 * T + 0.6 + 2.2 + 2.3, 0.26 * n + 2.4), sharey=True,
                                   gridspec_kw=dict(width_ratios=[0.55 * T + 0.6, 2.2], wspace=0.05))
    image = ax.imshow(rates.numpy(), aspect='auto', cmap='viridis', vmin=0, vmax=vmax, interpolation='nearest')
    annotate = T <= 16
    for i in range(n):
        for t in range(T):
            value = rates[i, t].item()
            if annotate and value == value:
                ax.text(t, i, f'{value:.3g}', ha='center', va='center', fontsize=6,
                        color='white' if value < 0.6 * vmax else 'black')
    ax.set_xticks(range(T), [str(t) for t in range(T)], fontsize=7)
    ax.set_xlabel('time step', fontsize=8)
    ax.set_yticks(range(n), [x.name for x in neurons], fontsize=7)
    runs = group_runs([x.name for x in neurons], {x.name: _block(x.name, x.group) for x in neurons})
    for _, first, _ in runs[1:]:
        ax.axhline(first - 0.5, color='white', lw=1.5)
        bars.axhline(first - 0.5, color='0.6', lw=0.6)
    axes_height = 0.26 * n + 0.4  # inches, about; the colour bar sits above the heat map without shrinking it
    cax = ax.inset_axes([0.0, 1.0 + 0.3 / axes_height, 1.0, 0.12 / axes_height])
    colorbar = fig.colorbar(image, cax=cax, orientation='horizontal')
    cax.xaxis.set_ticks_position('top')
    cax.xaxis.set_label_position('top')
    colorbar.set_label('firing rate (%) per time step', fontsize=8)
    colorbar.ax.tick_params(labelsize=7)

    overall = [x.rate * 100 for x in neurons]
    bars.barh(range(n), overall, height=0.7, color='#1b9e77')
    bars.set_xlim(0, max([1.0] + overall) * 1.05)
    for i, x in enumerate(neurons):  # a text column right of the bars: rate, silent and always-firing channels
        note = f'{x.rate * 100:.3g}%'
        if x.silent_channels:
            note += f', {x.silent_channels * 100:.3g}% silent'
        if x.always_firing_channels:
            note += f', {x.always_firing_channels * 100:.3g}% always'
        bars.text(1.03, i, note, va='center', fontsize=6, transform=bars.get_yaxis_transform())
    bars.set_xlabel('overall firing rate (%)', fontsize=8)
    bars.tick_params(axis='x', labelsize=7)
    bars.grid(axis='x', alpha=0.3)
    ax.set_ylim(n - 0.5, -0.5)
    _title(fig, title, f'firing rate of every neuron, in network order ({report.samples} samples)')
    bars.text(1.03, -0.7, 'overall rate; channels silent / always firing', fontsize=6, va='bottom', style='italic',
              transform=bars.get_yaxis_transform())
    fig.subplots_adjust(left=2.4 / fig.get_figwidth(), right=1 - 2.3 / fig.get_figwidth(),
                        bottom=0.5 / fig.get_figheight(),
                        top=1 - 1.55 / fig.get_figheight())
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def _show_input(ax, x: torch.Tensor, t: int) -> None:
    """One sample's input at time step ``t``: an image ``[C, H, W]`` (the same at every step) or event frames
    ``[T, 2, H, W]``."""
    if x.dim() == 4:  # event frames: ON red, OFF blue
        frame = x[t]
        counts = x[x > 0]
        scale = float(torch.quantile(counts, 0.99)) if counts.numel() else 1.0
        on, off = (frame[p] / max(scale, 1e-12) if p < frame.shape[0] else torch.zeros_like(frame[0])
                   for p in (0, 1))
        rgb = torch.stack([on, torch.zeros_like(on), off], -1).clamp(0, 1)
        ax.imshow(rgb.numpy(), interpolation='nearest')
        return
    image = (x - x.min()) / max(float(x.max() - x.min()), 1e-12)
    if image.shape[0] == 1:
        ax.imshow(image[0].numpy(), cmap='gray', interpolation='nearest')
    else:
        ax.imshow(image[:3].permute(1, 2, 0).numpy(), interpolation='nearest')


def plot_firing_maps(report: SpikeReport, path: str, title: Optional[str] = None) -> None:
    """For each recorded sample: its input and each tokenizer neuron's firing map (the % of channels firing at each
    position; one colour scale per neuron, shared by samples and time steps), per time step. Samples sit side by side
    when that makes at most 8 columns, else one under the other."""
    plt = _plt()
    if report.inputs is None or not report.maps:
        raise ValueError('the report holds no firing maps (record with samples >= 1 on a model with spatial neurons)')
    S = len(report.inputs)
    T = report.maps[0].maps.shape[1]
    per_sample = 1 + len(report.maps)  # rows of one sample: input, then each neuron
    across = S if S * T <= 8 else 1  # samples side by side
    down = S // across
    rows, cols = per_sample * down, T * across
    cell = 1.25 if cols <= 8 else 0.85
    fig, axes = plt.subplots(rows, cols + 1, figsize=(cell * cols + 2.0, cell * rows + 1.1), squeeze=False,
                             gridspec_kw=dict(width_ratios=[1] * cols + [0.08], wspace=0.08, hspace=0.12))
    scales = [max(float(m.maps.max()), 1e-6) * 100 for m in report.maps]
    events = report.inputs.dim() == 5
    images = {}
    for s in range(S):
        top, left = (s // across) * per_sample, (s % across) * T
        for r in range(per_sample):
            for t in range(T):
                ax = axes[top + r][left + t]
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    _show_input(ax, report.inputs[s], t)
                    ax.set_title(f'sample {s}, t = {t}' if across > 1 or t == 0 else f't = {t}', fontsize=7)
                else:
                    images[r] = ax.imshow(report.maps[r - 1].maps[s, t].numpy() * 100, cmap='magma', vmin=0,
                                          vmax=scales[r - 1], interpolation='nearest')
                if t == 0 and left == 0:
                    name = 'event frames' if events else 'input image'
                    if r:
                        name = _short(report.maps[r - 1].name)
                    h, w = report.maps[r - 1].maps.shape[2:] if r else report.inputs.shape[-2:]
                    ax.set_ylabel(f'{name}\n{h}x{w}', fontsize=7, rotation=0, ha='right', va='center')
    for row in range(rows):
        r = row % per_sample
        if r == 0:
            axes[row][cols].axis('off')
        else:
            bar = fig.colorbar(images[r], cax=axes[row][cols])
            bar.ax.tick_params(labelsize=6)
            bar.set_label('%', fontsize=6, rotation=0)
    _title(fig, title, 'tokenizer firing maps: % of channels firing at each position, per time step'
           + (' (ON events red, OFF blue)' if events else ''))
    fig.subplots_adjust(left=1.5 / fig.get_figwidth(), right=1 - 0.45 / fig.get_figwidth(),
                        bottom=0.1 / fig.get_figheight(), top=1 - 0.95 / fig.get_figheight())
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def plot_attention(report: SpikeReport, path: str, title: Optional[str] = None) -> None:
    """Per block (rows, network order): ``Q K^T`` of the first sample per head (one shared colour scale), and that
    sample's Q, K and V firing rates per head."""
    plt = _plt()
    if not report.attention:
        raise ValueError('the report holds no attention maps (the model has no SpikingSelfAttention)')
    blocks = report.attention
    heads = max(a.heads for a in blocks)
    vmax = max(max(float(a.qk.max()) for a in blocks), 1e-6)
    cell = 1.5 if heads <= 8 else 1.1
    fig, axes = plt.subplots(len(blocks), heads + 3, squeeze=False,
                             figsize=(cell * heads + 0.3 + 0.5 + 2.6 + 1.4, cell * len(blocks) + 1.3),
                             gridspec_kw=dict(width_ratios=[1] * heads + [0.07, 0.3, 2.2], wspace=0.12, hspace=0.25))
    for b, a in enumerate(blocks):
        row = axes[b]
        for h in range(heads):
            ax = row[h]
            ax.set_xticks([])
            ax.set_yticks([])
            if h >= a.heads:
                ax.axis('off')
                continue
            image = ax.imshow(a.qk[h].numpy(), cmap='inferno', vmin=0, vmax=vmax, interpolation='nearest')
            if b == 0:
                ax.set_title(f'head {h}', fontsize=8)
            if h == 0:
                ax.set_ylabel(f'{a.name}\nquery token (N={a.tokens})', fontsize=7)
            if b == len(blocks) - 1:
                ax.set_xlabel('key token', fontsize=7)
        bar = fig.colorbar(image, cax=row[heads])
        bar.ax.tick_params(labelsize=6)
        if b == 0:
            bar.ax.set_title(f'Q K^T\n(of d={a.head_dim})', fontsize=7)
        row[heads + 1].axis('off')  # room for the colour bar's ticks
        ax = row[heads + 2]
        width = 0.27
        for j, (role, color) in enumerate(ROLE_COLORS):
            rates = [r * 100 for r in getattr(a, f'rate_{role}')]
            ax.bar([h + (j - 1) * width for h in range(a.heads)], rates, width, color=color, label=role.upper())
        ax.set_xticks(range(a.heads), [str(h) for h in range(a.heads)], fontsize=6)
        ax.tick_params(axis='y', labelsize=6)
        ax.set_ylabel('firing rate (%)', fontsize=7)
        ax.yaxis.set_label_position('right')
        ax.yaxis.tick_right()
        ax.grid(axis='y', alpha=0.3)
        ax.set_ylim(0, max([1.0] + [100 * max(getattr(a, f'rate_{r}')) for r in 'qkv']) * 1.3)
        if b == 0:
            ax.legend(fontsize=6, ncol=3, loc='upper left')
        if b == len(blocks) - 1:
            ax.set_xlabel('head', fontsize=7)
    _title(fig, title, 'attention of sample 0: Q K^T per head, mean over the time steps (in how many of the head\'s '
           'channels query and key token both fire); Q/K/V firing rates of the sample per head')
    fig.subplots_adjust(left=1.0 / fig.get_figwidth(), right=1 - 0.55 / fig.get_figwidth(),
                        bottom=0.45 / fig.get_figheight(), top=1 - 0.85 / fig.get_figheight())
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
