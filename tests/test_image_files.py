"""ImageFolder data (ImageNet's layout) read through ``utils.data.image_files``: 16-bit images scaled, not clipped to
white; a split of unreadable images refused in training and in both report scripts, naming the files; an unreadable
class folder named as unreadable, not as empty."""
import os

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import models  # noqa: F401 (registers the models with timm)
from helpers import IMAGENET_YML, TINY_MODEL, load_script, refused
from utils.config import load_config
from utils.data.loaders import build_datasets
from utils.errors import DataError
from utils.training.main import train_main

ARGS = TINY_MODEL + ['-T', '1', '--img-size', '16', '--batch-size', '2', '--val-batch-size', '2', '--workers', '0',
                     '--amp', 'false', '--num-classes', '2', '--epochs', '1', '--cooldown-epochs', '0']


def write_tree(root, image=lambda rng: Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)),
               corrupt_split=None):
    """train/ and val/ with classes n01, n02 of two images each; ``corrupt_split``'s files are not images."""
    rng = np.random.default_rng(0)
    for split in ('train', 'val'):
        for cls in ('n01', 'n02'):
            (root / split / cls).mkdir(parents=True)
            for i in range(2):
                path = root / split / cls / f'{i}.png'
                if split == corrupt_split:
                    path.write_bytes(b'\x89PNG\r\n\x1a\n' + b'not the rest of a png' * 4)
                else:
                    image(rng).save(path)
    return root


def _cfg(root):
    return load_config(['--config', IMAGENET_YML, '--data-dir', str(root)] + ARGS)


def test_16_bit_greyscale_images_are_scaled_not_clipped(tmp_path):
    ramp = (np.arange(20 * 20, dtype=np.uint32).reshape(20, 20) * 163).astype(np.uint16)  # 0 .. 65037
    root = write_tree(tmp_path / 'i16', image=lambda rng: Image.fromarray(ramp))
    assert Image.open(root / 'train' / 'n01' / '0.png').mode == 'I;16'
    train, _ = build_datasets(_cfg(root))
    img, label = train[0]
    pixels = np.asarray(img)
    assert img.mode == 'RGB' and label == 0
    assert np.array_equal(pixels[..., 0], np.rint(ramp / 257).astype(np.uint8))  # Pillow's convert gives 255s
    assert np.array_equal(pixels[..., 0], pixels[..., 2]) and pixels.max() == 253


def test_unreadable_images_are_refused_naming_them(tmp_path, capsys):
    root = write_tree(tmp_path / 'bad-train', corrupt_split='train')
    out = tmp_path / 'run'
    refused(capsys, train_main, ['--config', IMAGENET_YML, '--data-dir', str(root), '--output', str(out)] + ARGS,
            'images in a row cannot be read', str(root / 'train' / 'n01' / '0.png'), 'Fix: replace or remove')
    assert not out.exists()


@pytest.mark.parametrize('script', ['energy_report', 'spike_report'])
def test_reports_refuse_an_evaluation_split_of_unreadable_images(tmp_path, capsys, script):
    root = write_tree(tmp_path / 'bad-val', corrupt_split='val')
    model = timm.create_model('spikingformer_8_384', num_classes=2, T=1, embed_dims=32, depths=1, num_heads=2)
    checkpoint = tmp_path / 'tiny.pth.tar'
    torch.save({'state_dict': model.state_dict()}, checkpoint)
    out = tmp_path / 'report'
    refused(capsys, load_script(script).main, ['--config', IMAGENET_YML, '--data-dir', str(root), '--checkpoint',
                                               str(checkpoint), '--output', str(out)] + ARGS[:-4],
            'images in a row cannot be read', str(root / 'val'))
    assert not out.exists()


def test_an_unreadable_class_folder_is_not_called_empty(tmp_path, monkeypatch):
    root = write_tree(tmp_path / 'perm')
    locked = str(root / 'train' / 'n02')
    scandir = os.scandir

    def no_permission(path='.'):  # as for a folder without read permission (the tests may run as root)
        if os.fspath(path) == locked:
            raise PermissionError(13, 'Permission denied', locked)
        return scandir(path)
    monkeypatch.setattr(os, 'scandir', no_permission)
    with pytest.raises(DataError) as e:
        build_datasets(_cfg(root))
    message = str(e.value)
    assert 'cannot be read (Permission denied): n02' in message and 'hold no images' not in message
    assert 'chmod' in message
