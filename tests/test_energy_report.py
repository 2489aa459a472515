"""scripts/energy_report.py on a tiny model and the digits data set: the three report files, and the same
accuracy as a plain evaluation of the same batches (the report does not change the model's outputs)."""
import itertools
import json

import pytest
import timm
import torch
import yaml

import energy
import models
from energy.constants import E_AC_PJ, E_MAC_PJ
from helpers import IMAGENET_YML, TINY_DIGITS_CONFIG, load_script
from utils.config import load_config
from utils.data.loaders import build_eval_loader
from utils.errors import UserError
from utils.training.engine import evaluate

@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    """A config file and a checkpoint (with BatchNorm biases that make the neurons fire) of a tiny model."""
    root = tmp_path_factory.mktemp('energy_report')
    config = root / 'tiny.yml'
    config.write_text(yaml.safe_dump(TINY_DIGITS_CONFIG))
    torch.manual_seed(0)
    model = timm.create_model(TINY_DIGITS_CONFIG['model'], num_classes=10, T=2, num_heads=2, embed_dims=32, depths=1)
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.bias.data.uniform_(0.2, 1.5)
    checkpoint = root / 'tiny.pth.tar'
    torch.save({'state_dict': model.state_dict(), 'epoch': 1}, checkpoint)
    return config, checkpoint, root


def test_report_files(tiny_run):
    config, checkpoint, root = tiny_run
    out = root / 'report'
    result = load_script('energy_report').main(['--config', str(config), '--checkpoint', str(checkpoint),
                                                '--limit-batches', '2', '--output', str(out)])
    data = json.loads((out / 'energy.json').read_text())
    assert {'mac_ops', 'ac_ops', 'energy_mj', 'samples', 'top1', 'layers', 'attention'} <= set(data)
    assert data['samples'] == 80 and data['run']['batches'] == 2 and data['paper'] is None
    assert (data['e_mac_pj'], data['e_ac_pj']) == (E_MAC_PJ, E_AC_PJ)  # the script's defaults
    assert data['energy_mj'] == pytest.approx((E_MAC_PJ * data['mac_ops'] + E_AC_PJ * data['ac_ops']) * 1e-9,
                                              rel=1e-12)
    assert data['ac_ops'] > 0 and 0 < data['attention'][0]['rate_q'] < 1
    kinds = [layer['kind'] for layer in data['layers']]
    assert kinds[0] == 'mac' and kinds[-1] == 'mac' and set(kinds[1:-1]) == {'ac'}
    md = (out / 'energy.md').read_text()
    assert '| # | operation | kind |' in md and 'block.0.attn' in md and 'r_q' in md and 'paper' not in md
    assert (out / 'energy.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'

    # the same accuracy as the engine's plain evaluation of the same two batches
    cfg = load_config(['--config', str(config)])
    model = timm.create_model(TINY_DIGITS_CONFIG['model'], num_classes=10, T=2, num_heads=2, embed_dims=32, depths=1)
    models.load_checkpoint(model, str(checkpoint))
    metrics = evaluate(model, build_eval_loader(cfg), torch.device('cpu'), limit_batches=2)
    assert result['report'].top1 == pytest.approx(metrics['top1'], abs=1e-9)
    direct = energy.estimate_energy(model, itertools.islice(build_eval_loader(cfg), 2))
    assert direct.to_dict() == result['report'].to_dict()


def test_float32_unless_asked(tiny_run):
    """The config's training AMP is not applied (the published calculator runs float32); --precision amp is."""
    config, checkpoint, root = tiny_run
    common = ['--config', str(config), '--checkpoint', str(checkpoint), '--limit-batches', '1', '--amp']
    load_script('energy_report').main(common + ['--output', str(root / 'fp32')])
    assert json.loads((root / 'fp32' / 'energy.json').read_text())['run']['amp_dtype'] is None
    load_script('energy_report').main(common + ['--precision', 'amp', '--output', str(root / 'amp')])
    data = json.loads((root / 'amp' / 'energy.json').read_text())
    assert data['run']['amp_dtype'] == 'bfloat16' and data['samples'] == 40 and data['ac_ops'] > 0


def test_published_row_is_recognised():
    script = load_script('energy_report')
    cfg = load_config(['--config', IMAGENET_YML])
    model = type('M', (), dict(embed_dims=768, depths=8, num_heads=8, T=4, num_classes=1000))
    assert script.published_row(cfg, model).energy_mj == 13.68
    model.num_heads = 12
    assert script.published_row(cfg, model) is None


def test_requires_a_checkpoint(tiny_run):
    config, _, root = tiny_run
    with pytest.raises(UserError, match='--checkpoint'):
        load_script('energy_report').main(['--config', str(config), '--output', str(root / 'x')])


def test_float16_autocast_on_cpu(tiny_run):
    """--precision amp --amp-dtype float16: the CUDA default's autocast, on CPU too (utils.training.main.amp_setup)."""
    config, checkpoint, root = tiny_run
    common = ['--config', str(config), '--checkpoint', str(checkpoint), '--limit-batches', '1']
    load_script('energy_report').main(common + ['--output', str(root / 'fp32_16')])
    load_script('energy_report').main(common + ['--precision', 'amp', '--amp-dtype', 'float16', '--output',
                                                str(root / 'fp16')])
    fp32, fp16 = (json.loads((root / name / 'energy.json').read_text()) for name in ('fp32_16', 'fp16'))
    assert fp16['run']['amp_dtype'] == 'float16' and fp32['run']['amp_dtype'] is None
    assert fp16['samples'] == 40 and fp16['mac_ops'] == fp32['mac_ops']  # MACs do not depend on the precision
    assert fp16['ac_ops'] == pytest.approx(fp32['ac_ops'], rel=0.05)  # spikes at the thresholds may differ
