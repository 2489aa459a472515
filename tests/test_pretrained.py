"""timm's pretrained convention (issue 24): every registered variant's pretrained_cfg, pretrained=True with a local
official-format file, the error without one, and test.py --results-file."""
import csv
import hashlib
import json

import pytest
import timm
import torch

import models  # noqa: F401  (registers the variants)
from helpers import CIFAR10_YML, TINY, refused, write_cifar10
from test_finetune import as_published_cifar
from utils.training.main import test_main as evaluate_main  # not named test_* (pytest would collect it)
from utils.training.main import train_main

TINY_KWARGS = dict(embed_dims=32, depths=1, num_heads=2, T=1)
# the paper's input size and the data set's normalisation; crop_pct 1.0 as the published evaluation
PAPER = {**{f'spikingformer_8_{d}': ((3, 224, 224), 1000, (0.485, 0.456, 0.406)) for d in (384, 512, 768)},
         **{f'spikingformer_cifar_{v}': ((3, 32, 32), 10, (0.4914, 0.4822, 0.4465))
            for v in ('4_256', '2_384', '4_384')},
         'spikingformer_dvs_2_256': ((2, 128, 128), 11, (0.0, 0.0))}


def test_every_variant_has_the_papers_pretrained_cfg():
    assert set(PAPER) == set(models.VARIANTS)
    for name, (size, classes, mean) in PAPER.items():
        cfg = timm.models.get_pretrained_cfg(name)
        assert (cfg.input_size, cfg.num_classes, tuple(cfg.mean), cfg.crop_pct) == (size, classes, mean, 1.0), name
        assert cfg.interpolation == 'bicubic' and cfg.classifier == 'head'
        model_cfg = timm.create_model(name, **TINY_KWARGS).pretrained_cfg
        assert (model_cfg['input_size'], model_cfg['crop_pct'], model_cfg['architecture']) == (size, 1.0, name)


@pytest.fixture(scope='module')
def official(tmp_path_factory):
    """A checkpoint in the official CIFAR format (published names, DDP prefix, an argparse Namespace) and its
    model's weights."""
    import argparse
    torch.manual_seed(5)
    source = timm.create_model('spikingformer_cifar_4_384', **TINY_KWARGS, num_classes=10)
    path = tmp_path_factory.mktemp('official') / 'official.pth.tar'
    torch.save({'state_dict': as_published_cifar(source.state_dict()), 'epoch': 399,
                'args': argparse.Namespace(model='Spikingformer')}, path)
    return str(path), source.state_dict()


def test_pretrained_true_loads_a_local_official_file(official):
    path, weights = official
    model = timm.create_model('spikingformer_cifar_4_384', pretrained=True, pretrained_cfg_overlay=dict(file=path),
                              **TINY_KWARGS)
    for key, value in model.state_dict().items():
        assert torch.equal(value, weights[key]), key
    assert model.pretrained_cfg['file'] == path
    torch.manual_seed(0)
    other = timm.create_model('spikingformer_cifar_4_384', pretrained=True, pretrained_cfg_overlay=dict(file=path),
                              **TINY_KWARGS, num_classes=100)  # as timm: a new head for another class count
    assert other.head.weight.shape == (100, 32)
    assert torch.equal(other.state_dict()['patch_embed.stem_conv.weight'], weights['patch_embed.stem_conv.weight'])


def test_pretrained_true_without_a_file_says_where_the_weights_are():
    with pytest.raises(RuntimeError) as e:
        timm.create_model('spikingformer_8_768', pretrained=True)
    message = str(e.value)
    assert 'github.com/TheBrainLab/Spikingformer' in message and "pretrained_cfg_overlay=dict(file=" in message


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp('results')
    data = write_cifar10(root / 'cifar')
    train_main(['--config', CIFAR10_YML, '--data-dir', str(data), '--smoke', '--output', str(root / 'run')] + TINY)
    return root / 'run' / 'last.pth.tar'


@pytest.mark.parametrize('name', ['results.csv', 'results.json'])
def test_results_file_gets_one_row_per_evaluated_checkpoint(trained, tmp_path, name):
    results = tmp_path / name
    for _ in range(2):
        evaluate_main(['--checkpoint', str(trained), '--results-file', str(results),
                       '--output', str(tmp_path / 'test')], CIFAR10_YML)
    if name.endswith('.json'):
        rows = json.loads(results.read_text())
    else:
        with open(results, newline='') as f:
            rows = list(csv.DictReader(f))
    assert len(rows) == 2 and rows[0]['checkpoint'] == str(trained)
    assert rows[0]['sha256'] == hashlib.sha256(trained.read_bytes()).hexdigest()
    assert int(rows[0]['param_count']) == 28_942 and float(rows[0]['img_per_sec']) > 0
    assert {'top1', 'top5', 'loss'} <= set(rows[1])
    assert not any(isinstance(v, (dict, list)) for v in rows[0].values())  # one flat row, as timm's
    assert 'provenance' not in rows[0] and 'checkpoint_sha256' not in rows[0] and 'commit' in rows[0]


def test_a_results_file_that_cannot_take_the_row_is_refused_before_evaluating(trained, tmp_path, capsys):
    other = tmp_path / 'notes.json'
    other.write_text('{"mine": 1}')
    out = ['--output', str(tmp_path / 'test')]
    refused(capsys, evaluate_main, ['--checkpoint', str(trained), '--results-file', str(other)] + out,
            'not a results file')
    assert other.read_text() == '{"mine": 1}'
    refused(capsys, evaluate_main, ['--checkpoint', str(trained), '--results-file', str(tmp_path / 'r.txt')] + out,
            '.csv or .json')
    assert not (tmp_path / 'test').exists()  # results.json is written after an evaluation: none ran
