"""The energy estimate (docs/recipe.md section 6): hand-computed counts on toy networks, the published calculator's
arithmetic, the weight-independent ImageNet MAC counts, and unchanged model outputs."""
import dataclasses
import inspect
import json
import math

import pytest
import timm
import torch
from torch import nn

from conftest import reference_model
import energy
import models
from energy.constants import E_AC_PJ, E_MAC_PJ
from helpers import load_script
from models.layers import SpikingSelfAttention

E_MAC, E_AC = 4.6e-9, 0.9e-9  # mJ per operation


def _all_hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


# ---------------------------------------------------------------------------------------------------- toy networks
class ConvToy(nn.Module):
    """A convolution on the real input, a LIF -> max pool -> convolution on spikes, and a linear head.

    The LIF (threshold 0.5, tau 2) fires exactly where the input is 1 when the input is binary, so the spike
    pattern is known by hand; the input itself is binary, like event-count frames on sparse data, and the
    convolution reading it must still count as dense MACs.
    """
    T = 2

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(2, 3, kernel_size=3, padding=1, bias=False)
        self.lif = models.lif(v_threshold=0.5)
        self.pool = nn.MaxPool2d(2)
        self.conv = nn.Conv2d(2, 3, kernel_size=1, bias=True)
        self.head = nn.Linear(3, 5)

    def forward(self, x):  # [B, 2, 4, 4]
        x = x.unsqueeze(0).repeat(self.T, 1, 1, 1, 1)  # [T, B, 2, 4, 4]
        a = self.stem(x.flatten(0, 1))  # real-valued input
        b = self.conv(self.pool(self.lif(x).flatten(0, 1)))  # spikes, max-pooled
        feat = a.mean((2, 3)) + b.mean((2, 3))
        return self.head(feat.reshape(self.T, -1, 3).mean(0))


def _conv_toy_input():
    x = torch.zeros(2, 2, 4, 4)
    x[0, 0] = 1  # sample 0: channel 0 all ones -> pooled: 4 ones
    x[1, 1, 0, 0] = 1  # sample 1: one spike -> pooled: 1 one
    return x


def test_conv_toy_hand_counts():
    """Per sample: stem MAC = T * 16 positions * 3 out * (3*3*2) = 1728 (dense, although its input is 0/1);
    spike conv dense = T * 4 positions * 3 out * (2 in + 1 bias) = 72, input firing rate = (4 + 1) ones per step over
    2 samples * 8 pooled elements = 10/32, so 22.5 ACs; head MAC = 3*5 + 5 = 20."""
    model = ConvToy()
    report = energy.estimate_energy(model, [(_conv_toy_input(), torch.tensor([0, 1]))])
    layers = {layer.name: layer for layer in report.layers}
    assert [layer.name for layer in report.layers] == ['stem', 'conv', 'head']
    assert (layers['stem'].kind, layers['stem'].dense_ops, layers['stem'].ops) == ('mac', 1728, 1728)
    assert (layers['conv'].kind, layers['conv'].dense_ops) == ('ac', 72)
    assert layers['conv'].firing_rate == pytest.approx(10 / 32, rel=1e-12)
    assert layers['conv'].ops == pytest.approx(22.5, rel=1e-12)
    assert (layers['head'].kind, layers['head'].dense_ops, layers['head'].ops) == ('mac', 20, 20)
    assert report.samples == 2
    assert report.mac_ops == 1748 and report.ac_ops == pytest.approx(22.5, rel=1e-12)
    assert report.energy_mj == pytest.approx(1748 * E_MAC + 22.5 * E_AC, rel=1e-12)
    assert layers['conv'].energy_mj == pytest.approx(22.5 * E_AC, rel=1e-12)
    assert report.top1 is not None and 0 <= report.top1 <= 100


class AttentionToy(nn.Module):
    """One spiking self-attention (dim 8, 2 heads, d = 4) on 2x2 tokens, T = 2, with BatchNorm weights set to 0 so
    that Q, K, V are the constant spike patterns of the BN biases:
    Q fires on head 0 (channels 0-3, r_q = 1/2), K everywhere (r_k = 1), V on channels 0 and 4 (r_v = 1/4)."""
    T = 2

    def __init__(self):
        super().__init__()
        self.attn = SpikingSelfAttention(8, 2, models.lif)
        for bn, fire in ((self.attn.q_bn, [0, 1, 2, 3]), (self.attn.k_bn, range(8)), (self.attn.v_bn, [0, 4])):
            bn.weight.data.zero_()
            bn.bias.data.fill_(-4.)
            bn.bias.data[list(fire)] = 4.

    def forward(self, x):  # [B, 8, 2, 2]
        return self.attn(x.unsqueeze(0).repeat(self.T, 1, 1, 1, 1))


def test_attention_toy_hand_counts():
    """proj_lif fires where the input is 4 (8 of 32 elements per step): q/k/v conv dense = T*N*8*8 = 512, ops 128
    each. Products: T*heads*N*d^2 = 2*2*4*16 = 256 dense each; K^T V at min(1, 1/4) -> 64, Q (K^T V) at 1/2 -> 128.
    Q K^T V * 0.125 is 2 on channel 0 only (head 0: 4 * N * 0.125), so attn_lif fires on 1/8 of its inputs and
    proj_conv (dense T*N*8*(8+1) = 576) does 72 ACs. Total: 648 ACs, no MACs."""
    x = torch.zeros(1, 8, 2, 2)
    x.view(-1)[::4] = 4.  # 8 of 32
    report = energy.estimate_energy(AttentionToy(), [x])
    layers = {layer.name: layer for layer in report.layers}
    for name in ('attn.q_conv', 'attn.k_conv', 'attn.v_conv'):
        assert (layers[name].kind, layers[name].dense_ops, layers[name].firing_rate) == ('ac', 512, 0.25)
        assert layers[name].ops == 128
    assert (layers['attn.product_kv'].dense_ops, layers['attn.product_kv'].firing_rate) == (256, 0.25)
    assert (layers['attn.product_q'].dense_ops, layers['attn.product_q'].firing_rate) == (256, 0.5)
    assert (layers['attn.product_kv'].ops, layers['attn.product_q'].ops) == (64, 128)
    assert (layers['attn.proj_conv'].dense_ops, layers['attn.proj_conv'].firing_rate) == (576, 0.125)
    assert layers['attn.proj_conv'].ops == 72
    assert report.mac_ops == 0 and report.ac_ops == 648 and report.top1 is None
    (rates,) = report.attention
    assert (rates.heads, rates.T, rates.tokens, rates.head_dim) == (2, 2, 4, 4)
    assert (rates.rate_q, rates.rate_k, rates.rate_v) == (0.5, 1.0, 0.25)
    assert report.energy_mj == pytest.approx(648 * E_AC, rel=1e-12)


# ------------------------------------------------------------------------------------- the published calculator
def published_calculator(model, batches, heads, tokens, T):
    """The published calculator's arithmetic, re-derived by hand from layer shapes and measured inputs.

    It follows these rules of the published ``energy_consumption_calculation`` package (not its code):
    * ``spike_rate``: an input is spikes when its values are a subset of {0, 1}; its rate is ``sum / numel``;
      anything else has rate 1 (100%);
    * the conv hook: ``kernel * in_channels * (out_channels / groups)`` per output position, times
      ``input.shape[0]`` (= T*B) times the output positions, plus ``out_channels`` per position for a bias; the
      linear hook: ``prod(input.shape) * out + out * input.shape[0]`` (bias);
      per call the count goes to the AC total times the rate for spikes, to the MAC total otherwise, and
      ``100 * rate`` is added to the layer's rate sum;
    * totals are divided by the number of samples (``len`` of each model input), rate sums by the number of calls;
    * ``get_energy_cost``: a conv/linear layer whose averaged rate is 100% adds its MAC total, any other its AC
      total; each block adds ``T * heads * N * d^2 * (min(r_k, r_v) + r_q)`` with the averaged (per call) rates of
      ``q_lif``, ``k_lif``, ``v_lif``; energy ``MACs/1e9 * 4.6 + ACs/1e9 * 0.9`` mJ.
    """
    stats, handles = {}, []

    def layer_hook(module, args, output):
        x = args[0]
        spike = bool(((x == 0) | (x == 1)).all())
        rate = (x.sum() / x.numel()).item() if spike else 1.0
        if isinstance(module, nn.Linear):
            count = math.prod(x.shape) * module.out_features + (module.out_features * x.shape[0]
                                                                 if module.bias is not None else 0)
        else:
            positions = x.shape[0] * math.prod(output.shape[2:])
            count = math.prod(module.kernel_size) * module.in_channels * (module.out_channels // module.groups)
            count = count * positions + (module.out_channels * positions if module.bias is not None else 0)
        s = stats.setdefault(module, [0.0, 0.0, 0.0, 0])
        s[0] += count * rate if spike else 0.0
        s[1] += 0.0 if spike else count
        s[2] += 100 * rate
        s[3] += 1

    def lif_hook(module, args, output):
        s = stats.setdefault(module, [0.0, 0])
        s[0] += 100 * (output.sum() / output.numel()).item()
        s[1] += 1

    attentions = [m for m in model.modules() if isinstance(m, SpikingSelfAttention)]
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            handles.append(m.register_forward_hook(layer_hook))
    for a in attentions:
        for lif in (a.q_lif, a.k_lif, a.v_lif):
            handles.append(lif.register_forward_hook(lif_hook))
    samples = 0
    with torch.no_grad():
        for x in batches:
            model(x)
            samples += len(x)
    for h in handles:
        h.remove()
    mac = ac = 0.0
    for m, s in stats.items():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            if abs(s[2] / s[3] - 100) < 1e-4:
                mac += s[1] / samples
            else:
                ac += s[0] / samples
    d = model.embed_dims // heads
    for a in attentions:
        rq, rk, rv = (stats[lif][0] / stats[lif][1] / 100 for lif in (a.q_lif, a.k_lif, a.v_lif))
        ac += T * heads * tokens * d * d * (min(rk, rv) + rq)
    return mac, ac, mac / 1e9 * 4.6 + ac / 1e9 * 0.9


@pytest.mark.parametrize('sizes, rate_average', [((3, 3), 'samples'), ((4, 2), 'batches')])
def test_agrees_with_published_calculator(reference, sizes, rate_average):
    """Same MACs, ACs and energy as the published calculator's rules to 1e-6 on a trained-like model (firing rates
    10-55%): equal batches with the default pooling of rates, unequal batches with the published per-batch mean."""
    model = reference_model(reference)
    batches = list(torch.split(reference['input'], list(sizes)))
    kw = reference['kwargs']
    tokens = (kw['img_size_h'] // kw['patch_size']) * (kw['img_size_w'] // kw['patch_size'])
    mac, ac, mj = published_calculator(model, batches, kw['num_heads'], tokens, kw['T'])
    report = energy.estimate_energy(model, batches, rate_average=rate_average)
    assert report.mac_ops == pytest.approx(mac, rel=1e-6)
    assert report.ac_ops == pytest.approx(ac, rel=1e-6)
    assert report.energy_mj == pytest.approx(mj, rel=1e-6)
    assert 0.05 < min(a.rate_q for a in report.attention)  # the check is not vacuous: real firing
    kinds = [layer.kind for layer in report.layers]
    assert kinds[0] == 'mac' and kinds[-1] == 'mac' and set(kinds[1:-1]) == {'ac'}


def test_attention_rates_are_the_published_rates(reference):
    """On one batch, the Q/K/V rates are the published model's own measured LIF rates (from the reference file)."""
    model = reference_model(reference)
    report = energy.estimate_energy(model, [(reference['input'], reference['target'])])
    for i, rates in enumerate(report.attention):
        for role in 'qkv':
            published = reference['lif_rates'][f'block.{i}.attn.{role}_lif']
            assert getattr(rates, f'rate_{role}') == pytest.approx(published, abs=1e-6)
    with torch.no_grad():
        expected_top1 = 100 * (model(reference['input']).argmax(-1) == reference['target']).float().mean().item()
    assert report.top1 == pytest.approx(expected_top1)


# -------------------------------------------------------------------------------- published MAC counts, ImageNet
def test_imagenet_mac_counts_without_data(tmp_path):
    """Weight-independent MACs per ImageNet image (the first convolution over T = 4 steps plus the head, weights and
    bias), with no checkpoint and no data: 347,329,512 for 8-512 through ``energy_report.py --no-checkpoint``,
    520,993,768 for 8-768 through the function; the energy at an assumed rate r is 4.6 pJ x MACs + 0.9 pJ x r x (the
    dense ops of every AC layer and attention product)."""
    from energy.synthetic import architecture_counts, energy_at_rates
    result = load_script('energy_report').main(['--config', 'imagenet/imagenet.yml', '--model', 'spikingformer_8_512',
                                                '--no-checkpoint', '--assume-rate', '0.1,0.2', '--output',
                                                str(tmp_path / 'a')])
    for rows in result['estimates'].values():
        assert [e.mac_ops for e in rows] == [347_329_512] * 2
    md = (tmp_path / 'a' / 'architecture.md').read_text()
    assert 'ASSUMED' in md and '| 10% (assumed) | mac | 347,329,512 |' in md and 'block.7.mlp.mlp2_conv' in md
    data = json.loads((tmp_path / 'a' / 'architecture.json').read_text())
    assert data['assumed'] is True and data['checkpoint'] is None and 'provenance' in data
    counts = architecture_counts(timm.create_model('spikingformer_8_768'), torch.zeros(1, 3, 224, 224))
    (e,) = energy_at_rates(counts, [0.15])
    assert e.mac_ops == 520_993_768
    dense_ac = sum(layer.dense_ops for layer in counts.layers if layer.kind in ('ac', 'product'))
    assert e.ac_ops == pytest.approx(0.15 * dense_ac, rel=1e-12)
    assert e.energy_mj == pytest.approx((4.6 * 520_993_768 + 0.9 * 0.15 * dense_ac) * 1e-9, rel=1e-12)
    assert [layer.name for layer in counts.layers if layer.kind == 'mac'] == ['patch_embed.stem_conv', 'head']
    assert len([layer for layer in counts.layers if layer.kind == 'product']) == 2 * 8


# ----------------------------------------------------------------------------------- outputs, hooks, input kinds
def test_outputs_unchanged_and_hooks_removed(reference):
    model = reference_model(reference).train()
    hooks = _all_hooks(model)
    x = reference['input']
    with torch.no_grad():
        plain = model.eval()(x)
    model.train()
    outputs = []
    with energy.EnergyCounter(model), torch.no_grad():
        outputs.append(model.eval()(x))
    assert torch.equal(outputs[0], plain)
    assert _all_hooks(model) == hooks
    model.train()
    energy.estimate_energy(model, [x])
    assert model.training and _all_hooks(model) == hooks
    with torch.no_grad():
        assert torch.equal(model.eval()(x), plain)


def test_hooks_removed_after_an_error(reference):
    model = reference_model(reference)
    hooks = _all_hooks(model)
    with pytest.raises(ValueError, match='expected images'):
        energy.estimate_energy(model, [torch.zeros(1, 3, 8)])  # wrong input rank
    assert _all_hooks(model) == hooks


def test_event_frames_first_conv_is_mac():
    """Binary event frames ``[B, T, C, H, W]``: the first convolution is still dense MACs, every other convolution
    ACs (the rule is where the input comes from, not its values). Same counts under inference mode."""
    model = timm.create_model('spikingformer_dvs_2_256', T=2, embed_dims=32, num_heads=2, depths=1).eval()
    frames = (torch.rand(2, 2, 2, 32, 32) < 0.3).float()
    report = energy.estimate_energy(model, [(frames, torch.tensor([0, 1]))])
    kinds = {layer.name: layer.kind for layer in report.layers}
    assert kinds.pop('patch_embed.stem_conv') == 'mac' and kinds.pop('head') == 'mac'
    assert set(kinds.values()) == {'ac'}
    assert report.layers[0].dense_ops == 2 * 32 * 32 * 4 * 9 * 2  # T * H * W * C/8 * 3*3 * in_channels
    with energy.EnergyCounter(model) as counter, torch.inference_mode():
        model(frames)
    again = counter.report()
    assert [(a.name, a.kind, a.ops) for a in again.layers] == [(a.name, a.kind, a.ops) for a in report.layers]


def test_report_to_dict_and_markdown(reference):
    model = reference_model(reference)
    report = energy.estimate_energy(model, [(reference['input'], reference['target'])])
    d = report.to_dict()
    assert {'mac_ops', 'ac_ops', 'energy_mj', 'samples', 'top1', 'layers'} <= set(d)
    assert set(d['layers'][0]) == {'name', 'kind', 'dense_ops', 'firing_rate', 'ops', 'energy_mj'}
    assert sum(layer['energy_mj'] for layer in d['layers']) == pytest.approx(d['energy_mj'], rel=1e-9)
    md = report.to_markdown(paper=energy.paper_row('spikingformer_8_768', 'imagenet'))
    assert '13.68 mJ' in md and 'block.1.attn' in md and 'r_q' in md
    assert energy.paper_row('spikingformer_8_768', 'cifar10') is None


def test_count_ones_is_exact_beyond_float32_integers():
    """More than 2^24 ones: a plain float32 sum may round, the counter's row-wise sum does not."""
    from energy.counter import count_ones
    x = torch.ones(2 ** 24 + 7, dtype=torch.bfloat16)
    x[::3] = 0
    assert count_ones(x).item() == 2 ** 24 + 7 - len(range(0, 2 ** 24 + 7, 3))
    assert count_ones(torch.zeros(0)).item() == 0


def test_rejects_unknown_rate_average():
    with pytest.raises(ValueError, match='rate_average'):
        energy.EnergyCounter(nn.Linear(2, 2), rate_average='median')


# ---------------------------------------------------------------------------------------------------- the constants
def test_the_energy_constants_are_the_papers_and_defined_once():
    """4.6 pJ per MAC and 0.9 pJ per AC reproduce the paper's energies from its own counts; every default of the
    package and of scripts/energy_report.py is the one object defined in ``energy.constants`` (a literal 4.6
    written anywhere else is another object), and a report made with the defaults prices its counts with it."""
    for row in energy.PAPER.values():
        if row.mac_ops is not None:
            assert (E_MAC_PJ * row.mac_ops + E_AC_PJ * row.ac_ops) * 1e-9 == pytest.approx(row.energy_mj, abs=0.01)
    assert (energy.E_MAC_PJ, energy.E_AC_PJ) == (E_MAC_PJ, E_AC_PJ) == (4.6, 0.9)
    fields = {f.name: f.default for f in dataclasses.fields(energy.EnergyReport)}
    script = load_script('energy_report').EXTRA_KEYS
    for name, constant in (('e_mac_pj', E_MAC_PJ), ('e_ac_pj', E_AC_PJ)):
        defaults = {'EnergyCounter.report': inspect.signature(energy.EnergyCounter.report).parameters[name].default,
                    'estimate_energy': inspect.signature(energy.estimate_energy).parameters[name].default,
                    'EnergyReport': fields[name], 'scripts/energy_report.py': script[name].default}
        assert all(value is constant for value in defaults.values()), (name, defaults)
    report = energy.estimate_energy(ConvToy(), [_conv_toy_input()])
    assert (report.e_mac_pj, report.e_ac_pj) == (E_MAC_PJ, E_AC_PJ)
    assert report.energy_mj == pytest.approx((report.mac_ops * E_MAC_PJ + report.ac_ops * E_AC_PJ) * 1e-9, rel=1e-12)
    assert sum(layer.energy_mj for layer in report.layers) == pytest.approx(report.energy_mj, rel=1e-12)
