"""Honest names: when config keys override a registered variant's architecture, the start line, the run folder's
default name and ``args.yaml`` name the architecture that runs, and the start says where the override came from."""
import os
import re

import pytest

from helpers import REPO
from utils.config import load_config
from utils.training.factory import architecture_label, architecture_overrides, override_note, run_name
from utils.training.main import train_main

QUICKSTART = str(REPO / 'cifar10' / 'quickstart.yml')


def test_label_and_folder_name_are_pure_functions_of_the_overrides():
    overrides = {'depths': 1, 'embed_dims': 32, 'num_heads': 4, 'T': 2}
    assert architecture_label('spikingformer_cifar_4_256', overrides) == \
        'spikingformer_cifar_4_256 (overridden: depths 1, embed_dims 32, num_heads 4, T 2)'
    assert run_name('spikingformer_cifar_4_256', overrides) == \
        'spikingformer_cifar_4_256-depths1-embed_dims32-num_heads4-T2'
    assert architecture_label('spikingformer_8_768', {}) == run_name('spikingformer_8_768', {}) == \
        'spikingformer_8_768'


@pytest.mark.parametrize('config, argv, expected', [
    ('imagenet/imagenet.yml', [], {}),                     # sets num_heads 8, which is the variant's own
    ('cifar10/cifar10.yml', [], {}),
    ('cifar10/cifar100.yml', [], {'num_heads': 8}),        # the published CIFAR-100 config: 8 heads, not 12
    ('dvs128-gesture/dvs128gesture_t10.yml', [], {'T': 10}),
    ('cifar10/cifar10.yml', ['--depths', '2', '-T', '4'], {'depths': 2}),
    ('cifar10/quickstart.yml', [], {'depths': 1, 'embed_dims': 32, 'num_heads': 2, 'T': 2}),
])
def test_overrides_are_the_values_that_differ_from_the_variant(config, argv, expected):
    cfg = load_config(['--config', str(REPO / config)] + argv)
    assert architecture_overrides(cfg) == expected


@pytest.mark.parametrize('model', ['Spikingformer', 'resnet18', 'spikingformer_typo'])
def test_models_without_a_registered_architecture_have_no_overrides(model):
    cfg = load_config(['--config', QUICKSTART, '--model', model])
    assert architecture_overrides(cfg) == {} and override_note(cfg) is None


def test_note_names_where_each_override_comes_from():
    cfg = load_config(['--config', QUICKSTART, '--num-heads', '4'])
    note = override_note(cfg)
    assert f'config file {QUICKSTART} sets the architecture of the registered spikingformer_cifar_4_256: ' \
           f'depths 1 (registered: 4)' in note
    assert 'the command line sets the architecture of the registered spikingformer_cifar_4_256: num_heads 4 ' \
           '(registered: 16)' in note
    assert override_note(load_config(['--config', str(REPO / 'imagenet' / 'imagenet.yml')])) is None


def test_a_run_under_overrides_is_named_for_what_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = train_main(['--config', QUICKSTART, '--epochs', '1', '--limit-train-batches', '1',
                         '--limit-eval-batches', '1', '--num-heads', '4'])
    folder = result['output']
    assert os.path.dirname(folder) == os.path.join('output', 'train')
    # <time>-<dataset>-<architecture that runs>-<unique suffix> (utils.run.run_claim)
    assert re.search(r'-digits-spikingformer_cifar_4_256-depths1-embed_dims32-num_heads4-T2-[0-9a-f]{4}$', folder)
    label = 'spikingformer_cifar_4_256 (overridden: depths 1, embed_dims 32, num_heads 4, T 2)'
    args = open(os.path.join(folder, 'args.yaml')).read()
    assert args.splitlines()[0] == f'# architecture that runs: {label}'
    log = open(os.path.join(folder, 'log.txt')).read().splitlines()
    assert any(line.startswith(f'{label}: ') and 'parameters' in line for line in log)
    assert any('the command line sets the architecture' in line and 'num_heads 4' in line for line in log)
    again = load_config(['--config', os.path.join(folder, 'args.yaml')])  # the comment keeps it a config
    assert (again.depths, again.embed_dims, again.num_heads, again.time_steps) == (1, 32, 4, 2)
