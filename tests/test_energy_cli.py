"""scripts/energy_report.py's new modes on tiny checkpoints: Spikingformer's report unchanged byte for byte, the
provenance of energy.json and spikes.json, synthetic inputs, the architecture-only report (the ImageNet MAC counts
with no data), the two-model comparison, and the one-screen refusals."""
import hashlib
import json
import types

import pytest
import timm
import torch
import yaml

import energy
import models  # noqa: F401  (registers the models in timm)
from conftest import FIXTURES
from helpers import TINY_DIGITS_CONFIG, load_script, refused

TINY = dict(num_classes=10, T=2, num_heads=2, embed_dims=32, depths=1)


def _firing_checkpoint(model, path, **extra):
    """Save ``model`` with BatchNorm biases that make its neurons fire (as tests/test_energy_report.py does)."""
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.bias.data.uniform_(0.2, 1.5)
    torch.save({'state_dict': model.state_dict(), 'epoch': 1, **extra}, path)
    return path


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """The fixed tiny Spikingformer checkpoint of tests/fixtures/energy_report_spikingformer_tiny.* (seed 0, built
    exactly as that report was made), its config, and a tiny Spikformer checkpoint (CIFAR layout: linear layers)
    that records a training run's provenance."""
    root = tmp_path_factory.mktemp('energy_cli')
    config = root / 'tiny.yml'
    config.write_text(yaml.safe_dump(TINY_DIGITS_CONFIG))
    torch.manual_seed(0)
    spikingformer = _firing_checkpoint(timm.create_model(TINY_DIGITS_CONFIG['model'], **TINY), root / 'tiny.pth.tar')
    torch.manual_seed(1)
    spikformer = _firing_checkpoint(timm.create_model('spikformer_cifar_4_256', **TINY), root / 'spikformer.pth.tar',
                                    provenance={'git': {'commit': 'abc123', 'dirty': False}, 'started': 'then'})
    return types.SimpleNamespace(root=root, config=str(config), spikingformer=str(spikingformer),
                                 spikformer=str(spikformer))


def _report(tiny, *args):
    return load_script('energy_report').main(['--config', tiny.config, '--limit-batches', '2', *args])


@pytest.fixture(scope='module')
def runs(tiny):
    """Each report run once for the tests below: the fixed Spikingformer checkpoint (default rule), the Spikformer
    checkpoint under both rules, and spike_report on the Spikformer checkpoint."""
    out = {'spikingformer': _report(tiny, '--checkpoint', tiny.spikingformer, '--output', str(tiny.root / 'sg'))}
    for rule in ('mac', 'ac'):
        out[rule] = _report(tiny, '--checkpoint', tiny.spikformer, '--model', 'spikformer_cifar_4_256',
                            '--multispike', rule, '--output', str(tiny.root / f'sf_{rule}'))
    out['spikes'] = load_script('spike_report').main(['--config', tiny.config, '--limit-batches', '1', '--checkpoint',
                                                      tiny.spikformer, '--model', 'spikformer_cifar_4_256',
                                                      '--output', str(tiny.root / 'spikes')])
    return out


def test_spikingformer_report_unchanged_by_the_rules(tiny, runs):
    """energy.md is byte-identical to the report written before the counting rules existed; energy.json keeps every
    old entry unchanged and only gains the rule, the count inputs, the unclassified list and the provenance.
    (Both rules give Spikingformer the same numbers: tests/test_energy_rules.py.)"""
    golden_md = (FIXTURES / 'energy_report_spikingformer_tiny.md').read_text()
    golden = json.loads((FIXTURES / 'energy_report_spikingformer_tiny.json').read_text())
    md = (tiny.root / 'sg' / 'energy.md').read_text().replace(str(tiny.root), '{ROOT}')
    assert md == golden_md
    data = json.loads((tiny.root / 'sg' / 'energy.json').read_text().replace(str(tiny.root), '{ROOT}'))
    data['run']['seconds'] = None
    assert {k: data[k] for k in golden} == golden
    assert set(data) - set(golden) == {'multispike', 'count_inputs', 'unclassified', 'provenance', 'checkpoint'}
    assert (data['multispike'], data['count_inputs'], data['unclassified']) == ('mac', [], [])


def test_reports_record_checkpoint_and_provenance(tiny, runs):
    """energy.json and spikes.json: the checkpoint's path and SHA-256, this run's provenance, and the training
    run's provenance when the checkpoint records one (absent otherwise)."""
    for file, path, recorded in ((tiny.root / 'sg' / 'energy.json', tiny.spikingformer, False),
                                 (tiny.root / 'sf_mac' / 'energy.json', tiny.spikformer, True),
                                 (tiny.root / 'spikes' / 'spikes.json', tiny.spikformer, True)):
        data = json.loads(file.read_text())
        sha = hashlib.sha256(open(path, 'rb').read()).hexdigest()
        assert data['checkpoint']['path'] == path and data['checkpoint']['sha256'] == sha, file
        assert ('provenance' in data['checkpoint']) is recorded, file
        if recorded:
            assert data['checkpoint']['provenance'] == {'git': {'commit': 'abc123', 'dirty': False},
                                                        'started': 'then'}
        prov = data['provenance']
        assert {'command', 'git', 'versions', 'host', 'started'} <= set(prov)
        script = 'energy_report.py' if file.name == 'energy.json' else 'spike_report.py'
        assert prov['command']['argv'][0] == f'scripts/{script}' and path in prov['command']['argv']
        assert prov['versions']['torch'] and prov['host']['devices'] == ['cpu']


def test_spikformer_report_names_its_count_layers(tiny, runs):
    """A Spikformer checkpoint: the layers on the residual stream's spike counts (linears in the CIFAR layout) are
    named in energy.md, cost MACs under 'mac' and ACs under 'ac' with the same dense counts."""
    outs = {rule: runs[rule]['report'] for rule in ('mac', 'ac')}
    for rule in ('mac', 'ac'):
        assert '`block.0.attn.q_linear`' in (tiny.root / f'sf_{rule}' / 'energy.md').read_text()
    mac = {layer.name: layer for layer in outs['mac'].layers}
    ac = {layer.name: layer for layer in outs['ac'].layers}
    assert outs['mac'].count_inputs == ['block.0.attn.q_linear', 'block.0.attn.k_linear', 'block.0.attn.v_linear',
                                        'block.0.mlp.mlp1_linear']
    for name in outs['mac'].count_inputs:
        assert (mac[name].kind, ac[name].kind) == ('mac', 'ac') and mac[name].dense_ops == ac[name].dense_ops
    assert outs['ac'].mac_ops < outs['mac'].mac_ops and outs['ac'].energy_mj < outs['mac'].energy_mj


# ------------------------------------------------------------------------------------------------ synthetic inputs
def test_synthetic_batches():
    """random: standard normal images, Poisson event counts (integers, mean EVENT_MEAN), the same for the same seed;
    zeros: zeros; batches of at most the batch size."""
    from energy.synthetic import EVENT_MEAN, synthetic_batches
    images = synthetic_batches((3, 8, 8), 'random', 5, 2, seed=3, events=False)
    assert [len(b) for b in images] == [2, 2, 1]
    again = synthetic_batches((3, 8, 8), 'random', 5, 2, seed=3, events=False)
    assert all(torch.equal(a, b) for a, b in zip(images, again))
    assert not torch.equal(images[0], synthetic_batches((3, 8, 8), 'random', 5, 2, seed=4, events=False)[0])
    pixels = torch.cat(synthetic_batches((3, 64, 64), 'random', 4, 4, seed=0, events=False))
    assert abs(pixels.mean().item()) < 0.02 and abs(pixels.std().item() - 1) < 0.02
    (events,) = synthetic_batches((4, 2, 64, 64), 'random', 3, 8, seed=0, events=True)
    assert events.shape == (3, 4, 2, 64, 64) and torch.equal(events, events.round()) and events.min() >= 0
    assert events.mean().item() == pytest.approx(EVENT_MEAN, rel=0.03)
    assert not synthetic_batches((3, 4, 4), 'zeros', 2, 2, seed=0, events=False)[0].any()


def test_checkpoint_without_data(tiny):
    """--input random|zeros runs a checkpoint with no data set: reproducible from --seed, recorded as synthetic,
    never set beside the paper; MACs are those of the real data (they depend on shapes only)."""
    runs = {}
    for name, args in (('r1', ['--input', 'random', '--seed', '5']), ('r2', ['--input', 'random', '--seed', '5']),
                       ('z', ['--input', 'zeros'])):
        out = tiny.root / f'syn_{name}'
        load_script('energy_report').main(['--config', tiny.config, '--checkpoint', tiny.spikingformer, '--samples',
                                           '3', '--data-dir', str(tiny.root / 'no-such-data'), '--output', str(out),
                                           *args])
        runs[name] = json.loads((out / 'energy.json').read_text())
    assert runs['r1']['samples'] == 3 and runs['r1']['run']['input'] == 'random' and runs['r1']['run']['seed'] == 5
    assert runs['r1']['ac_ops'] == runs['r2']['ac_ops'] != runs['z']['ac_ops']
    assert runs['z']['run']['input'] == 'zeros' and runs['z']['top1'] is None and runs['z']['paper'] is None
    golden = json.loads((FIXTURES / 'energy_report_spikingformer_tiny.json').read_text())
    assert runs['r1']['mac_ops'] == runs['z']['mac_ops'] == golden['mac_ops']


# ------------------------------------------------------------------------------------------- architecture only
def test_architecture_counts_of_a_model_with_spike_counts():
    """Count layers: dense MACs under 'mac', dense x count_max x r ACs under 'ac' (own model of test_energy_rules:
    fc reads counts of at most 2 spikes, dense 72 per sample; conv 32 on spikes; stem 16 and head 8 MACs)."""
    from energy.synthetic import architecture_counts, energy_at_rates
    from test_energy_rules import OwnSNN
    counts = architecture_counts(OwnSNN(), torch.zeros(1, 1, 2, 2))
    assert [(c.name, c.kind, c.dense_ops, c.count_max) for c in counts.layers] == [
        ('stem', 'mac', 16, 1), ('conv', 'ac', 32, 1), ('fc', 'counts', 72, 2), ('head', 'mac', 8, 1)]
    (mac,), (ac,) = energy_at_rates(counts, [0.25], 'mac'), energy_at_rates(counts, [0.25], 'ac')
    assert (mac.mac_ops, mac.ac_ops) == (96, 8) and (ac.mac_ops, ac.ac_ops) == (24, 8 + 72 * 2 * 0.25)
    assert [u.name for u in counts.unclassified] == ['mix', 'gate']


# --------------------------------------------------------------------------------------------------- comparison
def test_compare_two_checkpoints_on_the_same_data(tiny, runs):
    """One command, one table: both models on the same two batches, both rules, the saving 1 - E_A / E_B; the
    numbers are those of each model's own report."""
    out = tiny.root / 'compare'
    tiny_arch = ['--embed-dims', '32', '--num-heads', '2', '--depths', '1']  # on the command line: both sides
    result = _report(tiny, '--compare', 'spikingformer_cifar_4_256', 'spikformer_cifar_4_256', '--checkpoint',
                     tiny.spikingformer, '--checkpoint', tiny.spikformer, '--output', str(out), *tiny_arch)
    data = json.loads((out / 'compare.json').read_text())
    md = (out / 'compare.md').read_text()
    assert data['models'] == ['spikingformer_cifar_4_256', 'spikformer_cifar_4_256'] and data['paper'] is None
    alone = runs['ac']['report']
    for rule in ('mac', 'ac'):
        a, b = (energy.EnergyReport(**{k: v for k, v in r.items() if k in ('samples', 'mac_ops', 'ac_ops',
                                                                               'energy_mj', 'top1')}, layers=[])
                for r in data['rules'][rule]['reports'])
        assert a.samples == b.samples == 80
        assert data['rules'][rule]['saving_percent'] == pytest.approx(100 * (1 - a.energy_mj / b.energy_mj))
        assert f'| {rule} | spikformer_cifar_4_256 |' in md
        assert f'{data["rules"][rule]["saving_percent"]:.2f}%' in md
    assert data['rules']['ac']['reports'][1]['energy_mj'] == alone.energy_mj
    assert result['reports'][0]['mac'].energy_mj == result['reports'][0]['ac'].energy_mj  # Spikingformer: one figure
    assert [c['sha256'] for c in data['checkpoints']] == [
        hashlib.sha256(open(p, 'rb').read()).hexdigest() for p in (tiny.spikingformer, tiny.spikformer)]


def test_a_shared_config_keeps_each_variants_architecture(tmp_path):
    """A shared config file's architecture keys belong to the model it names: the other side of --compare builds its
    registered variant's own architecture; keys on the command line apply to both sides."""
    from energy.compare import side_argv
    from utils.config import load_config
    keys = load_script('energy_report').EXTRA_KEYS
    config = tmp_path / 'c.yml'
    config.write_text(yaml.safe_dump(dict(model='spikingformer_8_768', num_heads=12, depths=8)))
    common = ['--config', str(config)]
    a, b = (load_config(side_argv(common, name, 'x.pth.tar', keys), None, extra_keys=keys)
            for name in ('spikingformer_8_768', 'spikformer_8_768'))
    assert (a.model, a.num_heads, a.depths) == ('spikingformer_8_768', 12, 8)
    assert (b.model, b.num_heads, b.depths) == ('spikformer_8_768', None, None)  # the variant's own
    both = common + ['--num-heads', '4']
    assert load_config(side_argv(both, 'spikformer_8_768', 'x', keys), None, extra_keys=keys).num_heads == 4


def test_the_headline_pair_gets_the_papers_figures():
    """Spikingformer-8-768 against Spikformer-8-768 on ImageNet: 13.68 mJ vs 32.07 mJ, 57.34% beside the 'ac'
    rows; any other pair or data gets no paper column."""
    from energy.compare import compare_markdown, headline_pair
    from energy.paper import HEADLINE, PAPER, paper_saving
    assert f'{paper_saving(*(PAPER[n] for n in HEADLINE)):.2f}' == '57.34'

    def run(name, heads, data='data', dataset='imagenet'):
        model = types.SimpleNamespace(embed_dims=768, depths=8, num_heads=heads, T=4, num_classes=1000)
        return types.SimpleNamespace(model=model, data=data, cfg=types.SimpleNamespace(model=name, img_size=224,
                                                                                       dataset=dataset))
    assert headline_pair([run('spikingformer_8_768', 8), run('spikformer_8_768', 8)])
    assert not headline_pair([run('spikingformer_8_768', 8), run('spikformer_8_768', 12)])
    assert not headline_pair([run('spikingformer_8_768', 8), run('spikformer_8_768', 8, data='random')])
    assert not headline_pair([run('spikingformer_8_768', 8), run('spikformer_8_768', 8, dataset='cifar10')])
    fake = energy.EnergyReport.from_layers([], samples=1, top1=None, e_mac_pj=4.6, e_ac_pj=0.9)
    md = compare_markdown(HEADLINE, [{'mac': fake, 'ac': fake}] * 2, paper=True)
    assert '| 13.68 mJ, saving 57.34% |' in md and '| 32.07 mJ |' in md


# --------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize('args, words', [
    (['--no-checkpoint', '--checkpoint', 'x.pth.tar'], ['--no-checkpoint', '--checkpoint']),
    (['--no-checkpoint', '--assume-rate', '15'], ['--assume-rate', '(0, 1]']),
    (['--no-checkpoint', '--assume-rate', 'fast'], ['--assume-rate', 'START:STOP:COUNT']),
    (['--checkpoint', 'x.pth.tar', '--assume-rate', '0.1'], ['--assume-rate', '--no-checkpoint']),
    (['--compare', 'spikingformer_8_768', 'spikformer_8_768', '--checkpoint', 'a'], ['--compare', '--checkpoint']),
    (['--compare', 'spikingformer_8_768', '--checkpoint', 'a', '--checkpoint', 'b'], ['--compare', 'two']),
    (['--input', 'noise'], ["'input'", 'random']),
    (['--checkpoint', 'x.pth.tar', '--samples', '4'], ['--samples', '--input random|zeros']),
])
def test_refusals(capsys, tiny, args, words):
    refused(capsys, load_script('energy_report').main, ['--config', tiny.config, '--output',
                                                        str(tiny.root / 'refused'), *args], *words)
    assert not (tiny.root / 'refused').exists()
