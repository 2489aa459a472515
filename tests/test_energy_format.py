"""The energy report's presentation: '<0.1%' for tiny non-zero shares, one significant-figure rule, 'µJ', operation
groups, and a figure on a log scale in the title's unit with every bar's share printed."""
import re

import pytest
import torch

import energy
import models
from conftest import reference_model
from energy.plot import energy_figure, group_runs
from energy.report import EnergyReport, LayerEnergy, mj, percent, share, si


def test_number_formats():
    assert (share(0.0), share(1e-5), share(0.00049), share(0.0006), share(0.618)) == \
        ('0.0%', '<0.1%', '<0.1%', '0.1%', '61.8%')
    assert (mj(13.68), mj(0.05343), mj(4.174e-4), mj(7.617e-7), mj(0.0)) == \
        ('13.68 mJ', '53.43 µJ', '417.4 nJ', '761.7 pJ', '0 mJ')
    assert (si(179_412.3), si(5.0674e9), si(330)) == ('179.4 k', '5.067 G', '330')
    assert (percent(0.089601), percent(0.5), percent(0.0000332)) == ('8.96%', '50%', '0.00332%')


def _report(groups=True):
    """A stem that dominates (MACs), a mid-size AC layer and a tiny one, and a head; 50.41 µJ in all."""
    layers = [LayerEnergy('stem', 'mac', 9e6, 1.0, 9e6, 9e6 * 4.6e-9),
              LayerEnergy('blocks.0.attn.q_conv', 'ac', 4e7, 0.25, 1e7, 1e7 * 0.9e-9),
              LayerEnergy('blocks.0.attn.product_kv', 'ac', 1e4, 0.1, 1e3, 1e3 * 0.9e-9),
              LayerEnergy('head', 'mac', 2816, 1.0, 2816, 2816 * 4.6e-9)]
    names = {'stem': 'tokenizer', 'blocks.0.attn.q_conv': 'attention', 'blocks.0.attn.product_kv': 'attention',
             'head': 'head'}
    return EnergyReport.from_layers(layers, samples=4, top1=None, e_mac_pj=4.6, e_ac_pj=0.9,
                                    groups=names if groups else None)


def test_markdown_rules():
    md = _report().to_markdown()
    assert '| energy (MAC + AC) | 50.41 µJ |' in md and 'uJ' not in md
    table = md.split('## Per layer')[1]
    assert '| energy (µJ) | share |' in table
    assert '| 1 | blocks.0.attn.q_conv | AC | 40 M | 25% | 10 M | 9 | 17.9% |' in table
    assert '<0.1%' in table and '0.0%' not in table  # the product's share is 0.0018%
    for number in re.findall(r'\d[\d.]*', md.split('## Totals')[1].replace('9,002,816', '')):
        assert len(number.replace('.', '').lstrip('0')) <= 4, number  # 4 significant figures at most


def test_figure_is_log_scale_in_the_title_unit():
    import matplotlib.pyplot as plt
    fig = energy_figure(_report(), title='toy')
    energy_ax, rate_ax = fig.axes[:2]
    assert energy_ax.get_xscale() == 'log'
    assert '50.41 µJ per sample' in fig.get_suptitle() and '(µJ, log scale)' in energy_ax.get_xlabel()
    widths = sorted(p.get_width() + p.get_x() for p in energy_ax.patches[:4])  # bar ends, in µJ
    assert widths[-1] == pytest.approx(41.4, rel=1e-9)  # the stem: 9e6 MACs x 4.6 pJ
    labels = [t.get_text() for t in energy_ax.texts]
    assert labels == ['82.1%', '17.9%', '<0.1%', '<0.1%']
    groups = [t.get_text() for t in rate_ax.texts if t.get_text() in ('tokenizer', 'head') or '\n' in t.get_text()]
    assert groups == ['tokenizer', 'blocks.0\nattention', 'head']
    plt.close(fig)


def test_groups_of_a_spikingformer(reference):
    model = reference_model(reference)
    report = energy.estimate_energy(model, [reference['input']])
    runs = group_runs([layer.name for layer in report.layers], report.groups)
    assert [(group, last - first + 1) for group, first, last in runs] == \
        [('tokenizer', 5), ('attention', 6), ('MLP', 2), ('attention', 6), ('MLP', 2), ('head', 1)]
    assert report.to_dict()['groups']['block.1.attn.product_q'] == 'attention'


def test_toy_without_groups_is_other():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), models.lif(), torch.nn.Conv2d(2, 2, 1))
    report = energy.estimate_energy(model, [torch.ones(1, 1, 2, 2)])
    assert set(report.groups.values()) == {'other'}
