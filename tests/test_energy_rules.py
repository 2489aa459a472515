"""The counting rules for spike counts (Spikformer against the published calculator), a model that is neither
Spikingformer nor Spikformer counted by hand, and Spikingformer's report unchanged by the rules."""
import json

import pytest
import timm
import torch
from spikingjelly.activation_based import functional as sj_functional
from spikingjelly.activation_based import neuron as sj_neuron
from torch import nn

import energy
import models
from conftest import FIXTURES

E_MAC, E_AC = 4.6e-9, 0.9e-9  # mJ per operation


# ------------------------------------------------------------------------------------------ Spikformer, both rules
@pytest.fixture(scope='module')
def spikformer_imagenet():
    """The published Spikformer ImageNet-layout record and the project's Spikformer loaded with its weights."""
    record = torch.load(FIXTURES / 'spikformer_tiny.pt', weights_only=True)['imagenet_style']
    model = timm.create_model('Spikformer', **record['kwargs'], layout='imagenet', T=4)
    model.load_state_dict(models.checkpoint_filter_fn(record['state_dict'], model), strict=True)
    return record, model.eval()


def test_spikformer_matches_the_published_calculator_under_both_rules(spikformer_imagenet):
    """MACs, ACs, energy, Q/K/V rates and every layer's count of the published calculator's Spikformer record
    (batches of 3 and 2, its per-batch rate average), for Nspks_max = 1 ('mac') and 30 ('ac'), from one pass."""
    record, model = spikformer_imagenet
    published = json.loads((FIXTURES / 'spikformer_energy_tiny.json').read_text())
    x = record['input']
    reports = energy.estimate_energy_rules(model, [x[:3], x[3:]], rate_average='batches')
    for rule, key in (('mac', 'imagenet_style/Nspks_max=1'), ('ac', 'imagenet_style/Nspks_max=30')):
        report, ref = reports[rule], published[key]
        assert report.multispike == rule
        assert report.mac_ops == pytest.approx(ref['gmac'] * 1e9, rel=1e-6)
        assert report.ac_ops == pytest.approx(ref['gac'] * 1e9, rel=1e-6)
        assert report.energy_mj == pytest.approx(ref['energy_mJ'], rel=1e-6)
        for rates, (rq, rk, rv) in zip(report.attention, ref['qkv_rates']):
            assert (rates.rate_q, rates.rate_k, rates.rate_v) == pytest.approx((rq, rk, rv), abs=1e-6)
        ours = [layer for layer in report.layers if 'product' not in layer.name]
        assert len(ours) == len(ref['layers'])
        for layer, (name, (dense, ac, mac, _)) in zip(ours, ref['layers'].items()):
            assert layer.dense_ops == dense, name
            assert (layer.kind, layer.ops) == (('ac', pytest.approx(ac, rel=1e-6)) if ac else
                                               ('mac', pytest.approx(mac, rel=1e-6))), name
        assert report.unclassified == []
    # the layers reading the residual stream's spike counts: q/k/v and the first MLP layer of each block
    assert reports['mac'].count_inputs == reports['ac'].count_inputs == [
        f'block.{b}.{layer}' for b in (0, 1) for layer in
        ('attn.q_conv', 'attn.k_conv', 'attn.v_conv', 'mlp.mlp1_conv')]
    assert max(layer.firing_rate for layer in reports['ac'].layers) > 1  # a mean count above one: counts, not spikes
    single = energy.estimate_energy(model, [x[:3], x[3:]], rate_average='batches', multispike='ac')
    assert single.to_dict() == reports['ac'].to_dict()


def test_spikingformer_is_the_same_under_both_rules(reference):
    """Spikingformer's layers all read 0/1 spikes: no count inputs, identical reports under 'mac' and 'ac'."""
    from conftest import reference_model
    reports = energy.estimate_energy_rules(reference_model(reference), [reference['input']])
    mac, ac = reports['mac'].to_dict(), reports['ac'].to_dict()
    assert mac.pop('multispike') == 'mac' and ac.pop('multispike') == 'ac'
    assert mac == ac and mac['count_inputs'] == [] and mac['unclassified'] == []


def test_rejects_unknown_rule():
    with pytest.raises(ValueError, match='multispike'):
        energy.estimate_energy(nn.Linear(2, 2), [torch.zeros(1, 2)], multispike='sometimes')


# ------------------------------------------------------------------------------------------- a model of one's own
class TokenMix(nn.Module):
    """An attention-like product the estimator does not know: spikes times their transpose, no q/k/v neurons."""

    def forward(self, y):
        return y @ y.transpose(-1, -2)


class Gate(nn.Module):
    """A custom op with a parameter: neither a convolution, a linear layer, a neuron nor a normalisation."""

    def __init__(self, channels):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))

    def forward(self, y):
        return y * self.weight


class OwnSNN(nn.Module):
    """A SEW-style residual SNN from SpikingJelly IF neurons (multi-step, threshold 0.5), with weights chosen so that
    every spike is known by hand on a 0/1 input image ``x`` ``[B, 1, 2, 2]``, T = 2:

    * ``stem`` (1x1 conv, 1 -> 2, all ones) on the image: ``sn0`` fires where ``x`` is 1, both channels, both steps;
    * ``conv`` (1x1, 2 -> 2, only weight [0, 0] = 1) on those spikes: ``sn1`` fires where ``x`` is 1, channel 0;
    * residual ``r = s0 + s1``: spike counts, 2x on channel 0 and x on channel 1;
    * ``fc`` (linear 2 -> 3 with bias, on channel-last tokens ``[T, B, 4, 2]``) on the counts; zero weights, bias
      (1, -1, 1): ``sn2`` fires on channels 0 and 2 at every step;
    * ``mix`` (an unrecognised product) and ``gate`` (a custom op), then the ``head`` (linear 3 -> 2) on the mean.
    """
    T = 2

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 2, 1, bias=False)
        self.sn0 = sj_neuron.IFNode(v_threshold=0.5, step_mode='m')
        self.conv = nn.Conv2d(2, 2, 1, bias=False)
        self.sn1 = sj_neuron.IFNode(v_threshold=0.5, step_mode='m')
        self.fc = nn.Linear(2, 3)
        self.sn2 = sj_neuron.IFNode(v_threshold=0.5, step_mode='m')
        self.mix = TokenMix()
        self.gate = Gate(3)
        self.head = nn.Linear(3, 2)
        with torch.no_grad():
            self.stem.weight.fill_(1.)
            self.conv.weight.zero_()
            self.conv.weight[0, 0] = 1.
            self.fc.weight.zero_()
            self.fc.bias.copy_(torch.tensor([1., -1., 1.]))

    def forward(self, x):
        sj_functional.reset_net(self)
        T, B = self.T, x.shape[0]
        x = x.unsqueeze(0).repeat(T, 1, 1, 1, 1).flatten(0, 1)  # [T*B, 1, 2, 2]
        s0 = self.sn0(self.stem(x).reshape(T, B, 2, 2, 2))
        s1 = self.sn1(self.conv(s0.flatten(0, 1)).reshape(T, B, 2, 2, 2))
        r = s0 + s1  # SEW / Spikformer residual: spike counts 0, 1, 2
        y = self.sn2(self.fc(r.flatten(3).transpose(2, 3)))  # [T, B, 4 tokens, 3]
        a = self.mix(y)  # [T, B, 4, 4]
        y = self.gate(y)
        return self.head((y.mean(2) + a.mean((2, 3)).unsqueeze(-1)).mean(0))


def _own_input():
    x = torch.zeros(2, 1, 2, 2)
    x[0] = 1  # sample 0: 4 ones
    x[1, 0, 0, 0] = 1  # sample 1: 1 one -> p = 5/8 of the image is 1
    return x


def test_own_model_hand_counts_under_both_rules():
    """Per sample (T = 2, 4 positions, p = 5/8):
    stem MAC = T * 4 * 2 out * 1 in = 16; conv dense = T * 4 * 2 * 2 = 32 at input rate p -> 20 ACs;
    fc dense = T * 4 tokens * 3 out * (2 in + 1 bias) = 72 on counts of mean (2p + p) / 2 = 1.5p = 0.9375:
    rule 'mac' 72 MACs, rule 'ac' 72 * 0.9375 = 67.5 ACs; head MAC = 3 * 2 + 2 = 8.
    'mac': 96 MACs + 20 ACs; 'ac': 24 MACs + 87.5 ACs. Not counted, by name: the product in ``mix`` (dense
    T * 4 * 4 * 3 = 96 per sample) and the custom op ``gate``."""
    model = OwnSNN()
    reports = energy.estimate_energy_rules(model, [(_own_input(), torch.tensor([0, 1]))])
    for rule, mac, ac in (('mac', 96, 20), ('ac', 24, 87.5)):
        report = reports[rule]
        layers = {layer.name: layer for layer in report.layers}
        assert list(layers) == ['stem', 'conv', 'fc', 'head']
        assert (layers['stem'].kind, layers['stem'].ops) == ('mac', 16)
        assert (layers['conv'].kind, layers['conv'].dense_ops, layers['conv'].ops) == ('ac', 32, 20)
        assert layers['conv'].firing_rate == 5 / 8
        assert layers['fc'].dense_ops == 72
        assert (layers['fc'].kind, layers['fc'].ops) == (('mac', 72) if rule == 'mac' else ('ac', 67.5))
        assert (layers['head'].kind, layers['head'].ops) == ('mac', 8)
        assert (report.mac_ops, report.ac_ops) == (mac, ac)
        assert report.energy_mj == pytest.approx(mac * E_MAC + ac * E_AC, rel=1e-12)
        assert report.count_inputs == ['fc']
        assert [(u.name, u.what, u.calls, u.dense_ops) for u in report.unclassified] == [
            ('mix', 'matmul()', 1, 96), ('gate', 'module Gate with parameters', 1, None)]
        md = report.to_markdown()
        assert '## Not counted' in md and '| mix | matmul() | 1 |' in md and '| gate | module Gate' in md
        assert 'layers on spike counts (sums of spikes): `fc`' in md
    assert reports['ac'].layers[2].firing_rate == 0.9375


def test_counts_past_thirty_cost_macs_under_ac():
    """Nspks_max = 30: a sum of 31 spike tensors is beyond the 'ac' rule and costs MACs under both rules."""
    class Many(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.n, self.sn, self.fc = n, sj_neuron.IFNode(step_mode='m'), nn.Linear(2, 2, bias=False)

        def forward(self, x):
            s = self.sn(x.unsqueeze(0))
            total = s
            for _ in range(self.n - 1):
                total = total + s
            return self.fc(total)

    for n, kind in ((30, 'ac'), (31, 'mac')):
        report = energy.estimate_energy(Many(n), [torch.ones(1, 2)], multispike='ac')
        assert report.layers[0].kind == kind, n
        assert report.layers[0].ops == 4 * (n if kind == 'ac' else 1)  # dense 4, mean count n (all fire)


def test_copies_and_joins_keep_spikes_other_arithmetic_does_not():
    """A contiguous copy of a transposed spike tensor and a cat of spikes are still spikes (AC); spikes times a
    number are not (MAC, the conservative side)."""
    class Copies(nn.Module):
        def __init__(self):
            super().__init__()
            self.sn = sj_neuron.IFNode(step_mode='m')
            self.copied, self.joined, self.scaled = nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2)

        def forward(self, x):
            sj_functional.reset_net(self)
            s = self.sn(x.unsqueeze(0))  # [1, B, 2]
            a = self.copied(s.transpose(0, 1).contiguous().transpose(0, 1))
            b = self.joined(torch.cat([s, s.clone()]))
            return a + b.mean(0) + self.scaled(s * 0.5)

    report = energy.estimate_energy(Copies(), [torch.tensor([[1., 0.], [1., 1.]])])
    assert {layer.name: layer.kind for layer in report.layers} == {'copied': 'ac', 'joined': 'ac', 'scaled': 'mac'}
    assert {layer.name: layer.firing_rate for layer in report.layers if layer.kind == 'ac'} == {'copied': 0.75,
                                                                                                'joined': 0.75}
