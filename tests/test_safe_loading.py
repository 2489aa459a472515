"""No checkpoint runs code: a pickle payload is refused by every entry point (test.py, --resume,
--initial-checkpoint, energy_report.py, spike_report.py, models.load_checkpoint) unless --trust-checkpoint says
otherwise; checkpoints as timm, the published code and this project write them load without it."""
import argparse
import builtins
import shutil
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

import models
from helpers import CIFAR10_YML, SCHEDULE, TINY, load_script, refused, run, tiny_cifar_run, write_cifar10
from utils.training.main import test_main as evaluate_main  # not named test_* (pytest would collect it)
from utils.training.main import train_main


class Payload:
    """Unpickling this creates ``marker`` (``open(marker, 'w')``): the classic ``__reduce__`` code execution."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.open, (self.marker, 'w')


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A 1-epoch run of a tiny model, and a copy of its last.pth.tar with a payload beside the weights."""
    root = tmp_path_factory.mktemp('safe_loading')
    data, run_dir = tiny_cifar_run(root, epochs=1)
    base = ['--config', CIFAR10_YML, '--data-dir', str(data)] + TINY + SCHEDULE
    good = torch.load(run_dir / 'last.pth.tar', weights_only=True)
    return dict(root=root, data=data, base=base, run=run_dir, good=good)


def _evil_copy(trained, folder: Path, marker: Path) -> Path:
    """A run folder whose last.pth.tar is the good checkpoint plus a payload (all entry points accept it otherwise)."""
    shutil.copytree(trained['run'], folder)
    path = folder / 'last.pth.tar'
    (folder / 'model_best.pth.tar').unlink()
    torch.save({**trained['good'], 'payload': Payload(marker)}, path)
    return path


def _refused(capsys, main, argv, path):
    """Exit 2 with one screen naming the file, the blocked callable and the opt-in."""
    refused(capsys, main, argv, str(path), 'io.open', '--trust-checkpoint')


def test_a_payload_is_refused_by_every_entry_point(trained, tmp_path, capsys):
    marker = tmp_path / 'MARKER'
    evil = _evil_copy(trained, tmp_path / 'run', marker)
    args_yaml = (tmp_path / 'run' / 'args.yaml').read_bytes()

    _refused(capsys, evaluate_main, ['--checkpoint', str(evil), '--output', str(tmp_path / 'test')], evil)
    _refused(capsys, train_main, ['--resume', str(evil), '--epochs', '2'], evil)
    assert (tmp_path / 'run' / 'args.yaml').read_bytes() == args_yaml
    _refused(capsys, train_main, trained['base'] + ['--epochs', '1', '--initial-checkpoint', str(evil),
                                                    '--output', str(tmp_path / 'finetune')], evil)
    for script in ('energy_report', 'spike_report'):
        _refused(capsys, load_script(script).main, ['--checkpoint', str(evil), '--limit-batches', '1',
                                                    '--output', str(tmp_path / script)], evil)

    model = timm.create_model('spikingformer_cifar_4_384', embed_dims=32, depths=1, num_heads=2, T=1)
    with pytest.raises(models.CheckpointError, match='io.open'):
        models.load_checkpoint(model, str(evil))
    with pytest.raises(models.CheckpointError, match='io.open'):
        models.read_checkpoint(str(evil))

    assert not marker.exists()
    assert not [name for name in ('test', 'finetune', 'energy_report', 'spike_report') if (tmp_path / name).exists()]


def test_a_legacy_format_payload_is_refused_too(tmp_path):
    marker = tmp_path / 'MARKER'
    path = tmp_path / 'legacy.pth.tar'
    torch.save({'state_dict': {}, 'payload': Payload(marker)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(models.CheckpointError, match='io.open'):
        models.read_checkpoint(str(path))
    assert not marker.exists()


def test_trust_checkpoint_loads_it_with_a_warning(trained, tmp_path, capsys):
    marker = tmp_path / 'MARKER'
    evil = _evil_copy(trained, tmp_path / 'run', marker)
    code, err = run(evaluate_main, ['--checkpoint', str(evil), '--trust-checkpoint', '--output', str(tmp_path / 'o')],
                    capsys)
    assert code == 0, err
    assert 'warning:' in err and 'io.open' in err and '--trust-checkpoint' in err
    assert marker.exists()  # what the option warns about: the payload ran
    assert (tmp_path / 'o' / 'results.json').is_file()
    model = timm.create_model('spikingformer_cifar_4_384', embed_dims=32, depths=1, num_heads=2, T=1, num_classes=10)
    marker.unlink()
    assert models.load_checkpoint(model, str(evil), trust=True)['epoch'] == 0 and marker.exists()


def test_published_style_checkpoints_load_without_the_option(trained, tmp_path, capsys):
    """timm's CheckpointSaver layout (argparse args with lists, tuples and None; DDP prefixes; an optimizer; NumPy
    scalars as some scripts store metrics) and the DVS scripts' layout."""
    good = trained['good']
    state = {f'module.{k}': v for k, v in good['state_dict'].items()}
    args = argparse.Namespace(model='Spikingformer', mean=None, std=None, scale=[0.08, 1.0], ratio=(0.75, 4 / 3),
                              input_size=None, lr_noise=None, aa='rand-m9-n1-mstd0.4-inc1', epochs=300, amp=True,
                              device='cuda:0', resume='', decay_rate=0.1, crop_pct=None)
    timm_style = tmp_path / 'timm_style.pth.tar'
    torch.save({'epoch': 299, 'arch': 'Spikingformer', 'state_dict': state, 'optimizer': good['optimizer'],
                'version': 2, 'args': args, 'metric': 95.81, 'amp_scaler': {'scale': 65536.0, '_growth_tracker': 7},
                'best_acc': np.float64(95.81), 'count': np.int64(3)}, timm_style)
    dvs_style = tmp_path / 'dvs_style.pth.tar'
    torch.save({'model': good['state_dict'], 'optimizer': good['optimizer'], 'epoch': 191, 'args': args,
                'lr_scheduler': {'T_max': 64, 'base_lrs': [0.1], 'last_epoch': 192, '_last_lr': [0.0]},
                'max_test_acc1': np.float32(98.3)}, dvs_style)
    explicit = ['--config', CIFAR10_YML, '--data-dir', str(trained['data'])] + TINY
    for path in (timm_style, dvs_style):
        code, err = run(evaluate_main, explicit + ['--checkpoint', str(path), '--output', str(tmp_path / path.stem)],
                        capsys)
        assert code == 0 and 'warning' not in err, err
    checkpoint = models.read_checkpoint(str(timm_style))
    assert checkpoint['args'].ratio == (0.75, 4 / 3) and checkpoint['args'].mean is None
    assert checkpoint['best_acc'] == 95.81


def test_a_file_that_is_not_a_checkpoint(trained, tmp_path, capsys):
    text = tmp_path / 'notes.pth.tar'
    text.write_text('this is not a checkpoint\n')
    empty = tmp_path / 'empty.pth.tar'
    empty.write_bytes(b'')
    for path in (text, empty):
        err = refused(capsys, evaluate_main, ['--checkpoint', str(path)], str(path), 'corrupt')
        assert '--trust-checkpoint' not in err


# ------------------------------------------------------------------ data files run no code either
def test_a_cifar_batch_with_a_payload_is_refused(tmp_path, capsys):
    """CIFAR batches are pickles: only NumPy's array reconstruction is unpickled from them, so a payload in a
    (downloaded, shared) data file is an unreadable file, not code that runs."""
    import pickle
    data = write_cifar10(tmp_path / 'cifar')
    batch = data / 'cifar-10-batches-py' / 'data_batch_1'
    with open(batch, 'rb') as f:
        entry = pickle.load(f)
    marker = tmp_path / 'pwned'
    with open(batch, 'wb') as f:
        pickle.dump({**entry, 'data': np.asarray(entry['data'], dtype=np.uint8), 'x': Payload(marker)}, f)
    refused(capsys, train_main, ['--config', CIFAR10_YML, '--data-dir', str(data), '--output', str(tmp_path / 'run')]
            + TINY + SCHEDULE + ['--epochs', '1'], 'data_batch_1', 'refused')
    assert not marker.exists()
    assert not (tmp_path / 'run').exists()


def test_a_frame_cache_file_with_a_payload_is_refused(tmp_path):
    """SpikingJelly loads cached frames with allow_pickle=True; this project's loader does not."""
    from utils.data.dvs_data import load_frames
    marker = tmp_path / 'pwned'
    path = tmp_path / 'frames.npz'
    np.savez(path, frames=np.array([Payload(marker)], dtype=object))
    with pytest.raises(ValueError, match='allow_pickle'):
        load_frames(path)
    assert not marker.exists()
    np.savez_compressed(tmp_path / 'good.npz', frames=np.ones((2, 2, 4, 4), dtype=np.float64))
    frames = load_frames(tmp_path / 'good.npz')
    assert frames.dtype == np.float32 and frames.shape == (2, 2, 4, 4)
