"""Your own data (issue 24): --dataset folder on a generated train/ + val/ ImageFolder, fine-tuned from a checkpoint
in the official CIFAR format with --initial-checkpoint, evaluated with test.py, and its class list checked."""
import argparse
import json
import os
import shutil

import numpy as np
import pytest
import timm
import torch
import yaml
from PIL import Image

import models  # noqa: F401
from helpers import IMAGENET_YML, TINY, refused
from test_finetune import as_published_cifar
from utils.training.main import test_main as evaluate_main  # not named test_* (pytest would collect it)
from utils.training.main import train_main

CLASSES = ['cat', 'dog', 'fox']


def write_folder(root, classes=CLASSES, train=6, val=2):
    """``root/train/<class>/*.png`` and ``root/val/<class>/*.png``: 20x20 images whose red channel tells the class."""
    rng = np.random.default_rng(0)
    for split, n in (('train', train), ('val', val)):
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                image = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
                image[..., 0] = 80 * c
                Image.fromarray(image).save(root / split / name / f'{i}.png')
    return root


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp('folder')
    torch.manual_seed(7)
    official = timm.create_model('spikingformer_cifar_4_384', embed_dims=32, depths=1, num_heads=2, T=1)
    path = root / 'official_cifar10.pth.tar'
    torch.save({'state_dict': as_published_cifar(official.state_dict()), 'epoch': 399,
                'args': argparse.Namespace(model='Spikingformer')}, path)
    return dict(root=root, data=write_folder(root / 'pets'), official=str(path), weights=official.state_dict())


def test_fine_tune_a_published_checkpoint_on_your_own_folder(setup, tmp_path, capsys):
    """The documented example: imagenet/train.py's config on a 3-class folder, from the official CIFAR checkpoint."""
    run = tmp_path / 'run'
    train_main(['--config', IMAGENET_YML, '--dataset', 'folder', '--data-dir', str(setup['data']),
                '--model', 'spikingformer_cifar_4_384', '--initial-checkpoint', setup['official'], '--smoke',
                '--output', str(run)] + TINY + ['-b', '6'])
    out = capsys.readouterr().out
    assert 'classifier head re-initialised: the checkpoint has 10 classes, this model 3' in out
    assert 'pets (18 train / 6 eval samples)' in out
    args = yaml.safe_load((run / 'args.yaml').read_text())
    assert (args['dataset'], args['dataset_name'], args['num_classes'], args['img_size']) == ('folder', 'pets', 3, 16)
    assert args['mean'] == [0.485, 0.456, 0.406]  # the ImageNet-style pipeline of the config
    last = torch.load(run / 'last.pth.tar', weights_only=True)
    assert last['class_names'] == CLASSES and last['state_dict']['head.weight'].shape == (3, 32)

    results = evaluate_main(['--checkpoint', str(run / 'last.pth.tar'), '--output', str(tmp_path / 'test')])
    assert results['dataset'] == 'pets' and results['samples'] == 6
    assert json.loads((tmp_path / 'test' / 'results.json').read_text())['dataset'] == 'pets'

    other = write_folder(tmp_path / 'other', ['cat', 'dog', 'owl'])
    refused(capsys, evaluate_main, ['--checkpoint', str(run / 'last.pth.tar'), '--data-dir', str(other),
                                    '--output', str(tmp_path / 'test2')], 'only in the run: fox', 'only here: owl')
    four = write_folder(tmp_path / 'four', ['cat', 'dog', 'fox', 'owl'])  # another count: the same message
    refused(capsys, evaluate_main, ['--checkpoint', str(run / 'last.pth.tar'), '--data-dir', str(four),
                                    '--output', str(tmp_path / 'test3')], 'trained on 3 classes', 'has 4')


def test_dataset_name_names_the_run_folder(setup, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    data = shutil.copytree(setup['data'], tmp_path / 'data')
    result = train_main(['--config', IMAGENET_YML, '--dataset', 'folder', '--data-dir', str(data), '--dataset-name',
                         'my-pets', '--model', 'spikingformer_cifar_4_384', '--smoke'] + TINY + ['-b', '6'])
    assert '-my-pets-spikingformer_cifar_4_384' in os.path.basename(result['output'])  # <time>-<data>-<model>...
    assert 'my-pets (18 train' in capsys.readouterr().out


def test_a_folder_without_train_is_refused(tmp_path, capsys):
    (tmp_path / 'val' / 'a').mkdir(parents=True)
    refused(capsys, train_main, ['--config', IMAGENET_YML, '--dataset', 'folder', '--data-dir', str(tmp_path),
                                 '--output', str(tmp_path / 'run')] + TINY, 'train not found', 'train/ and val/')
