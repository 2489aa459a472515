"""Fine-tuning (--initial-checkpoint): the weights of a checkpoint in the published format, another class count and
another T, strict everywhere but the head; and the mistakes it must refuse."""
import argparse
import re

import pytest
import torch

from helpers import CIFAR10_YML, TINY, read_summary, refused, write_cifar10
from utils.config import load_config
from utils.training.factory import build_model
from utils.training.finetune import load_initial_checkpoint
from utils.training.main import train_main

SHORT = ['--epochs', '1', '--warmup-epochs', '1', '--cooldown-epochs', '0', '--limit-train-batches', '2',
         '--limit-eval-batches', '1']


def as_published_cifar(state):
    """This model's names -> the published CIFAR tokenizer names and DDP's module. prefix, plus the unused
    LayerNorm tensors, as the official CIFAR checkpoint has them."""
    out = {}
    for key, value in state.items():
        key = key.replace('patch_embed.stem_', 'patch_embed.block0_')
        key = re.sub(r'^patch_embed\.stages\.(\d)\.(conv|bn)\.', lambda m: f'patch_embed.block{int(m[1]) + 1}_{m[2]}.',
                     key)
        out[f'module.{key}'] = value
    dims = state['head.weight'].shape[1]
    out.update({f'module.block.0.{n}.{p}': torch.ones(dims) for n in ('norm1', 'norm2') for p in ('weight', 'bias')})
    return out


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp('finetune')
    torch.manual_seed(7)
    source = build_model(load_config(TINY + ['--num-classes', '100']))  # T = 1, 100 classes
    for m in source.modules():  # non-default BatchNorm statistics: they must load too
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
    path = root / 'official_100_classes.pth.tar'
    published = as_published_cifar(source.state_dict())
    assert 'module.patch_embed.block0_conv.weight' in published and 'module.block.0.norm2.bias' in published
    torch.save({'state_dict': published, 'epoch': 399, 'args': argparse.Namespace(model='Spikingformer')}, path)
    data = write_cifar10(root / 'cifar')
    return dict(root=root, path=str(path), source=source.state_dict(),
                base=['--config', CIFAR10_YML, '--data-dir', str(data)] + TINY + ['--seed', '3'])


def test_every_tensor_but_the_head_equals_the_checkpoints(setup):
    torch.manual_seed(0)
    model = build_model(load_config(TINY + ['-T', '2', '--num-classes', '10']))  # another T and class count
    fresh_head = model.head.weight.detach().clone()
    line = load_initial_checkpoint(model, setup['path'])
    state = model.state_dict()
    assert model.T == 2 and state['head.weight'].shape == (10, 32) and state['head.bias'].shape == (10,)
    assert torch.equal(state['head.weight'], fresh_head)
    for key, value in state.items():
        if not key.startswith('head.'):
            assert torch.equal(value, setup['source'][key]), key
    assert 're-initialised' in line and '100 classes' in line and 'this model 10' in line
    # the same class count: the head loads too, and nothing is said about it
    same = build_model(load_config(TINY + ['--num-classes', '100']))
    line = load_initial_checkpoint(same, setup['path'])
    assert all(torch.equal(v, setup['source'][k]) for k, v in same.state_dict().items())
    assert 're-initialised' not in line


def test_fine_tuning_trains_and_resumes(setup, tmp_path):
    out = tmp_path / 'run'
    argv = setup['base'] + SHORT + ['-T', '2', '--initial-checkpoint', setup['path'], '--output', str(out)]
    result = train_main(argv)
    assert result['best_epoch'] == 0
    log = (out / 'log.txt').read_text()
    assert f'initial weights from {setup["path"]}' in log and 're-initialised' in log
    saved = load_config(['--config', str(out / 'args.yaml')])
    assert saved.initial_checkpoint == setup['path'] and saved.time_steps == 2
    assert torch.load(out / 'last.pth.tar', weights_only=True)['epoch'] == 0  # a new run: no epoch carried over
    # resuming the fine-tuning run with its own config (which names the initial checkpoint) continues it
    train_main(['--config', str(out / 'args.yaml'), '--resume', str(out / 'last.pth.tar'), '--epochs', '2'])
    assert [r['epoch'] for r in read_summary(out)] == ['0', '1']


def test_mistakes_give_a_message_and_exit_2(setup, tmp_path, capsys):
    def check(argv, *words):
        refused(capsys, train_main, setup['base'] + SHORT + argv, *words)

    out = tmp_path / 'run'
    check(['--embed-dims', '64', '--initial-checkpoint', setup['path'], '--output', str(out)],
          'official_100_classes.pth.tar', 'shape mismatch', 'patch_embed.stem_conv.weight', '--embed-dims')
    check(['--initial-checkpoint', str(tmp_path / 'gone.pth.tar'), '--output', str(out)], 'gone.pth.tar', 'not found')
    assert not out.exists()  # refused before the run folder is made
    other = tmp_path / 'other'
    train_main(setup['base'] + SHORT + ['--output', str(other)])
    # a resumed run keeps the initial checkpoint it was started from (the recipe check names the key)
    check(['--initial-checkpoint', setup['path'], '--resume', str(other / 'last.pth.tar')],
          'cannot resume', 'initial_checkpoint', 'run None')
    assert len(read_summary(other)) == 1
