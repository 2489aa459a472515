"""Checkpoints that would give silent wrong results or tracebacks are refused where they are read
(``models.read_checkpoint`` -> ``check_checkpoint``), by every entry point, with one screen naming the tensor or
field, and nothing written: NaN/Inf weights, run fields of the wrong type, a recorded config of the wrong types."""
import shutil
from pathlib import Path

import pytest
import torch

import models
from helpers import CIFAR10_YML, SCHEDULE, TINY, load_script, refused, tiny_cifar_run
from utils.training.main import test_main as evaluate_main  # not named test_* (pytest would collect it)
from utils.training.main import train_main


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A 1-epoch run of a tiny model on synthetic CIFAR-10, and its last.pth.tar as loaded."""
    root = tmp_path_factory.mktemp('checkpoint_validation')
    data, run_dir = tiny_cifar_run(root, epochs=1)
    base = ['--config', CIFAR10_YML, '--data-dir', str(data)] + TINY + SCHEDULE
    good = torch.load(run_dir / 'last.pth.tar', weights_only=True)
    return dict(root=root, base=base, run=run_dir, good=good)


def _run_copy(trained, folder: Path, **changes) -> Path:
    """A copy of the run folder whose last.pth.tar is the good checkpoint with ``changes``."""
    shutil.copytree(trained['run'], folder)
    (folder / 'model_best.pth.tar').unlink()
    path = folder / 'last.pth.tar'
    torch.save({**trained['good'], **changes}, path)
    return path


def _every_reader_refuses(capsys, trained, tmp_path, path, *words):
    """test.py, --resume, --initial-checkpoint and both report scripts refuse ``path`` naming ``words``; no folder
    is created and the run's args.yaml is left as it was."""
    args_yaml = (path.parent / 'args.yaml').read_bytes()
    refused(capsys, evaluate_main, ['--checkpoint', str(path), '--output', str(tmp_path / 'test')], *words)
    refused(capsys, train_main, ['--resume', str(path), '--epochs', '2'], *words)
    refused(capsys, train_main, trained['base'] + ['--epochs', '1', '--initial-checkpoint', str(path),
                                                   '--output', str(tmp_path / 'finetune')], *words)
    for script in ('energy_report', 'spike_report'):
        refused(capsys, load_script(script).main, ['--checkpoint', str(path), '--limit-batches', '1',
                                                   '--output', str(tmp_path / script)], *words)
    assert (path.parent / 'args.yaml').read_bytes() == args_yaml
    assert not [n for n in ('test', 'finetune', 'energy_report', 'spike_report') if (tmp_path / n).exists()]


def test_nan_or_inf_weights_are_refused_naming_the_tensor(trained, tmp_path, capsys):
    state = dict(trained['good']['state_dict'])
    name = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 4 and k.startswith('block'))
    broken = state[name].clone()
    broken.view(-1)[:2] = torch.tensor([float('nan'), float('inf')])
    path = _run_copy(trained, tmp_path / 'run', state_dict={**state, name: broken})
    _every_reader_refuses(capsys, trained, tmp_path, path, name, '2 of', 'NaN/Inf', 'diverged')
    # the library call too, and EMA weights are checked like the others
    with pytest.raises(models.CheckpointError, match='state_dict_ema.head.weight'):
        ema = {'head.weight': torch.full((2,), float('-inf'))}
        models.check_checkpoint({'state_dict': state, 'state_dict_ema': ema}, 'x.pth')


@pytest.mark.parametrize('field, value', [('epoch', '0'), ('world_size', 0), ('best_epoch', -1),
                                          ('best_metric', 'high'), ('optimizer', 'adamw')])
def test_run_fields_of_the_wrong_type_are_refused(trained, tmp_path, capsys, field, value):
    path = _run_copy(trained, tmp_path / 'run', **{field: value})
    for argv in (['--checkpoint', str(path), '--output', str(tmp_path / 'test')], ):
        refused(capsys, evaluate_main, argv, repr(field), repr(value))
    args_yaml = (path.parent / 'args.yaml').read_bytes()
    refused(capsys, train_main, ['--resume', str(path), '--epochs', '2'], repr(field), repr(value))
    assert (path.parent / 'args.yaml').read_bytes() == args_yaml and not (tmp_path / 'test').exists()


@pytest.mark.parametrize('key, value', [('batch_size', [64]), ('mean', [[0.5], 0.5, 0.5]), ('lr', {'a': 1}),
                                        ('model', ['spikingformer_cifar_4_384'])])
def test_a_recorded_config_of_the_wrong_types_is_refused(trained, tmp_path, capsys, key, value):
    path = _run_copy(trained, tmp_path / 'run', args={**trained['good']['args'], key: value})
    refused(capsys, evaluate_main, ['--checkpoint', str(path), '--output', str(tmp_path / 'test')],
            repr(key), "the checkpoint's config")
    refused(capsys, train_main, ['--resume', str(path), '--epochs', '2'], repr(key), "the checkpoint's config")
    assert not (tmp_path / 'test').exists()


def test_weights_that_are_not_tensors_are_refused(trained, tmp_path, capsys):
    state = dict(trained['good']['state_dict'])
    name = next(iter(state))
    path = _run_copy(trained, tmp_path / 'run', state_dict={**state, name: 'edited'})
    refused(capsys, evaluate_main, ['--checkpoint', str(path), '--output', str(tmp_path / 'test')],
            f'{name} (str)', 'not tensors')
    assert not (tmp_path / 'test').exists()
