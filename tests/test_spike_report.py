"""scripts/spike_report.py end to end: a tiny image model on the digits and a tiny event model on synthetic DVS128
Gesture data; the five files, the console naming each one, the same rates as the energy report's input rates, and
clear errors for bad options."""
import json

import pytest
import timm
import torch
import yaml

import models  # noqa: F401 (registers the Spikingformer variants with timm)

from helpers import REPO, TINY_DIGITS_CONFIG, load_script
from utils.errors import UserError

FILES = ['spikes.json', 'spikes.md', 'firing_rates.png', 'firing_maps.png', 'attention.png']


def _firing(model):
    """``model`` with BatchNorm biases that make its neurons fire (a fresh model's zero biases leave many silent)."""
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.bias.data.uniform_(0.2, 1.5)
    return model


def _save(model, path, args=None):
    """As train.py saves it (``args``: its config), or as the published scripts did (no config)."""
    torch.save({'state_dict': model.state_dict(), 'epoch': 1, **({'args': args} if args else {})}, path)


@pytest.fixture(scope='module')
def image_run(tmp_path_factory):
    """A train.py-style checkpoint of a tiny digits model that carries its config (so no --config is needed).

    The first neuron (4 channels, T=2) reads the stem's BatchNorm, here with weight 0: its input is the constant
    bias of each channel. -5 never fires; 5 fires at both steps (charge 5 / tau 2 >= threshold 1); 1.5 fires at the
    second step only (charges 0.75, then 0.75 + (1.5 - 0.75) / 2 = 1.125)."""
    root = tmp_path_factory.mktemp('spike_report')
    model = _firing(timm.create_model(TINY_DIGITS_CONFIG['model'], num_classes=10, T=2, num_heads=2, embed_dims=32,
                                      depths=1))
    with torch.no_grad():
        model.patch_embed.stem_bn.weight.zero_()
        model.patch_embed.stem_bn.bias.copy_(torch.tensor([-5.0, 5.0, 1.5, 1.5]))
    _save(model, root / 'tiny.pth.tar', args=TINY_DIGITS_CONFIG)
    return root


def test_image_checkpoint(image_run, capsys):
    out = image_run / 'report'
    result = load_script('spike_report').main(['--checkpoint', str(image_run / 'tiny.pth.tar'), '--limit-batches',
                                               '2', '--samples', '3', '--output', str(out)])
    printed = capsys.readouterr().out
    for name in FILES:
        assert f'wrote {out / name}' in printed
    assert [str(out / name) for name in FILES] == result['files']
    for name in FILES[2:]:
        assert (out / name).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    data = json.loads((out / 'spikes.json').read_text())
    assert data['samples'] == 80 and data['run']['batches'] == 2 and data['map_samples'] == 3
    names = [n['name'] for n in data['neurons']]
    assert names[:4] == [f'patch_embed.stages.{i}.lif' for i in range(4)] and names[-1] == 'block.0.mlp.mlp2_lif'
    first = data['neurons'][0]
    assert first['channels'] == 4 and first['rate_per_step'] == [0.25, 0.75] and first['rate'] == 0.5
    assert (first['silent_channels'], first['always_firing_channels']) == (0.25, 0.25)  # channels 0 and 1
    assert first['read_by'] == ['patch_embed.stages.0.conv']
    assert [a['name'] for a in data['attention_sample']] == ['block.0.attn']
    md = (out / 'spikes.md').read_text()
    assert '| # | neuron | group |' in md and 'block.0.attn.q_lif' in md and 'products (r_q)' in md

    # the same rates as the energy report's on the same batches
    load_script('energy_report').main(['--checkpoint', str(image_run / 'tiny.pth.tar'), '--limit-batches', '2',
                                   '--output', str(image_run / 'energy')])
    rates = {layer['name']: layer['firing_rate']
             for layer in json.loads((image_run / 'energy' / 'energy.json').read_text())['layers']}
    for neuron in data['neurons']:
        for layer in neuron['read_by']:
            assert rates[layer] == pytest.approx(neuron['rate'], rel=1e-12)


def test_bad_options(image_run):
    script = load_script('spike_report')
    with pytest.raises(UserError, match='--checkpoint'):
        script.main(['--output', str(image_run / 'x')])
    with pytest.raises(UserError, match=r"'samples' is 0 .* in \[1, 16\]"):
        script.main(['--checkpoint', str(image_run / 'tiny.pth.tar'), '--samples', '0',
                     '--output', str(image_run / 'y')])
    assert not (image_run / 'y').exists()


def test_event_checkpoint(tmp_path, capsys):
    """Synthetic DVS128 Gesture event frames and a published-style checkpoint (no config inside: --config)."""
    prepare = load_script('prepare_dvs')
    root = tmp_path / 'gesture'
    assert prepare.main(['dvs128-gesture', '--synthetic', '--raw', str(tmp_path / 'raw'), '--root', str(root),
                         '--per-class', '2', '--no-progress']) == 0
    model = timm.create_model('spikingformer_dvs_2_256', T=2, embed_dims=32, num_heads=2, depths=1)
    _save(_firing(model), tmp_path / 'dvs.pth.tar')
    config = tmp_path / 'dvs.yml'
    config.write_text(yaml.safe_dump(dict(yaml.safe_load((REPO / 'dvs128-gesture' / 'dvs128gesture.yml').read_text()),
                                          time_steps=2, embed_dims=32, num_heads=2, depths=1, val_batch_size=4,
                                          workers=0, data_dir=str(root), neuron_backend='torch')))
    out = tmp_path / 'report'
    result = load_script('spike_report').main(['--config', str(config), '--checkpoint', str(tmp_path / 'dvs.pth.tar'),
                                           '--limit-batches', '1', '--output', str(out)])
    printed = capsys.readouterr().out
    assert all(f'wrote {out / name}' in printed for name in FILES)
    report = result['report']
    assert report.samples == 4 and report.inputs.shape == (2, 2, 2, 128, 128)  # event frames [S, T, C, H, W]
    assert [m.maps.shape[2:] for m in report.maps] == [(128, 128), (64, 64), (32, 32), (16, 16)]
    assert all(0 < n.rate < 1 for n in report.neurons)
