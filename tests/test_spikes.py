"""The spike recorder (energy/spikes.py): hand-counted rates, silent and always-firing channels, firing maps and
attention maps on toy networks; agreement with the energy report's input firing rates and with the published
model's own LIF rates on every layout; unchanged outputs; the figures."""
import pytest
import torch
from torch import nn

from conftest import reference_model
from test_energy import AttentionToy
import energy
import models
from energy.spike_plots import plot_attention, plot_firing_maps, plot_firing_rates
from models.layers import SpikingTokenizer




class EventToy(nn.Module):
    """Event-like input ``[B, T=2, C=3, 2, 2]`` into one LIF (threshold 0.5, tau 2) inside a ``SpikingTokenizer``-
    typed container, read by a 1x1 convolution. On a 0/1 input this LIF fires exactly where the input is 1."""

    def __init__(self):
        super().__init__()
        self.patch_embed = SpikingTokenizer(3, 8, pool_stages=(), make_lif=models.lif)  # only for its type
        self.patch_embed.lif = models.lif(v_threshold=0.5)
        self.conv = nn.Conv2d(3, 4, kernel_size=1)

    def forward(self, x):
        s = self.patch_embed.lif(x.transpose(0, 1).contiguous())  # [T, B, C, H, W]
        return self.conv(s.flatten(0, 1)).mean((1, 2, 3))


def _event_input():
    """Channel 0 fires everywhere at both steps, channel 1 never, channel 2 at one position of sample 0 at t = 1."""
    x = torch.zeros(2, 2, 3, 2, 2)
    x[:, :, 0] = 1
    x[0, 1, 2, 0, 1] = 1
    return x


def test_hand_counts():
    """Per step: t = 0 has 8 ones (channel 0: 2 samples x 4 positions) of 24 elements, t = 1 has 9. Channel 1 is
    silent, channel 0 always fires: 1/3 each. The firing map of sample 0 at t = 1 is 2/3 at (0, 1) (channels 0
    and 2 of 3), 1/3 elsewhere; the convolution reads the spikes directly."""
    model = EventToy()
    report = energy.record_spikes(model, [(_event_input(), None)], samples=2)
    (lif,) = [n for n in report.neurons if n.name == 'patch_embed.lif']
    assert (lif.time_steps, lif.channels, lif.positions) == (2, 3, 4)
    assert lif.rate_per_step == pytest.approx([8 / 24, 9 / 24], abs=1e-15)
    assert lif.rate == pytest.approx(17 / 48, abs=1e-15)
    assert (lif.silent_channels, lif.always_firing_channels) == (pytest.approx(1 / 3), pytest.approx(1 / 3))
    assert lif.group == 'tokenizer' and lif.read_by == ['conv'] and lif.read_after_pooling_by == []
    (firing,) = report.maps
    assert firing.name == 'patch_embed.lif' and firing.maps.shape == (2, 2, 2, 2)  # [samples, T, H, W]
    expected = torch.full((2, 2), 1 / 3)
    expected[0, 1] = 2 / 3
    assert torch.allclose(firing.maps[0, 1], expected) and torch.allclose(firing.maps[1, 1], torch.full((2, 2), 1 / 3))
    assert torch.equal(report.inputs, _event_input())
    assert report.samples == 2 and report.batches == 1 and report.top1 is None


def test_attention_maps_by_hand():
    """Head 0: every query and key token fire in all 4 channels, so Q K^T is 4 everywhere; head 1: Q is silent, 0.
    Per-head rates: Q (1, 0), K (1, 1), V (1/4, 1/4); they are the energy report's r_q, r_k, r_v."""
    model = AttentionToy().eval()
    x = torch.zeros(3, 8, 2, 2)
    x.view(3, -1)[:, ::4] = 4.
    report = energy.record_spikes(model, [x], samples=1)
    (attention,) = report.attention
    assert (attention.name, attention.heads, attention.tokens, attention.head_dim) == ('attn', 2, 4, 4)
    assert torch.equal(attention.qk[0], torch.full((4, 4), 4.)) and torch.equal(attention.qk[1], torch.zeros(4, 4))
    assert (attention.rate_q, attention.rate_k, attention.rate_v) == ([1, 0], [1, 1], [0.25, 0.25])
    rates = energy.estimate_energy(model, [x]).attention[0]
    for role in 'qkv':
        neuron = report.neuron(f'attn.{role}_lif')
        assert (neuron.attention, neuron.role) == ('attn', role)
        assert neuron.rate == getattr(rates, f'rate_{role}')
    # no tokenizer in this model: every neuron with a spatial output gets maps (proj_lif: fires at position (0, 0))
    (firing,) = report.maps
    expected = torch.zeros(1, 2, 2, 2)
    expected[:, :, 0, 0] = 1
    assert firing.name == 'attn.proj_lif' and torch.equal(firing.maps, expected)


def test_rates_match_the_energy_report_and_the_published_model(layout_reference):
    """On the same (unequal) batches, every neuron's overall rate equals the input firing rate the energy report
    gives each layer that reads its spikes directly, and its r_q / r_k / r_v. Layers after max pooling (the
    pooled tokenizer stages) read a different tensor, with a rate at least as high. Every spike-reading layer is
    accounted for, and all rates (one batch) are the published model's own LIF rates, in the same order."""
    model = reference_model(layout_reference)
    x, target = layout_reference['input'], layout_reference['target']
    batches = [(x[:2], target[:2]), (x[2:], target[2:])]
    spikes = energy.record_spikes(model, batches)
    report = energy.estimate_energy(model, batches)
    layer_rates = {layer.name: layer.firing_rate for layer in report.layers if layer.kind == 'ac'}
    attention = {a.name: a for a in report.attention}
    seen, pooled = set(), 0
    for neuron in spikes.neurons:
        assert neuron.read_by or neuron.read_after_pooling_by or neuron.role, neuron.name
        for layer in neuron.read_by:
            assert layer_rates[layer] == pytest.approx(neuron.rate, rel=1e-12), layer
        for layer in neuron.read_after_pooling_by:
            assert layer_rates[layer] >= neuron.rate and neuron.group == 'tokenizer'
            pooled += 1
        if neuron.role:
            assert getattr(attention[neuron.attention], f'rate_{neuron.role}') == pytest.approx(neuron.rate, rel=1e-12)
        assert sum(neuron.rate_per_step) / neuron.time_steps == pytest.approx(neuron.rate, rel=1e-12)
        seen.update(neuron.read_by + neuron.read_after_pooling_by)
    assert seen == {name for name in layer_rates if '.product_' not in name}
    assert pooled == (2 if layout_reference['kwargs']['layout'] == 'cifar' else 4)

    whole = energy.record_spikes(model, [(x, target)])
    assert whole.top1 == report.top1
    published = list(layout_reference['lif_rates'].values())
    assert [n.rate for n in whole.neurons] == pytest.approx(published, abs=1e-6)


def test_outputs_unchanged_and_hooks_removed(reference):
    model = reference_model(reference)
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    x = reference['input']
    with torch.no_grad():
        plain = model(x)
    with energy.SpikeRecorder(model) as recorder, torch.no_grad():
        hooked = model(x)
    assert torch.equal(hooked, plain) and recorder.report().samples == len(x)
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == hooks
    with pytest.raises(ValueError, match='no forward pass'):
        energy.SpikeRecorder(model).report()


def test_figures(reference, tmp_path):
    """The three figures of a CIFAR-layout model (2 blocks, 4 heads, T = 4) are PNGs of a sensible size."""
    from PIL import Image
    model = reference_model(reference)
    report = energy.record_spikes(model, [reference['input']], samples=2)
    for plot, name in ((plot_firing_rates, 'rates'), (plot_firing_maps, 'maps'), (plot_attention, 'attention')):
        path = tmp_path / f'{name}.png'
        plot(report, str(path), title='tiny')
        width, height = Image.open(path).size
        assert 300 < width < 2500 and 200 < height < 3000, (name, width, height)
    with pytest.raises(ValueError, match='no attention'):
        plot_attention(energy.record_spikes(EventToy(), [_event_input()]), str(tmp_path / 'x.png'))
