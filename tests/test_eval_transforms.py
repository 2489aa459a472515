"""Evaluation transforms, for every data set, equal the published test script's (timm's ``validate``/eval loader):
resize of the short side to floor(img_size / crop_pct) with the configured interpolation, centre crop to img_size,
normalisation with the config's mean/std, and no augmentation (no random crop, flip, RandAugment, erasing or
mixing). Event data are evaluated on the cached frames as they are.

Each case is checked twice: on the transform objects the loader holds, and on the pixels it gives for a known
image, which the test computes on its own with PIL (so a wrong crop, interpolation, normalisation or a training
transform changes the numbers compared, not only a repr)."""
import math
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import FastCollateMixup
from torchvision import transforms

from helpers import REPO, write_cifar10
from utils.config import load_config
from utils.data.loaders import build_eval_loader, build_loaders

INTERPOLATION = {'bicubic': Image.BICUBIC, 'bilinear': Image.BILINEAR, 'nearest': Image.NEAREST}
# The published evaluation constants of each data set (the published YAML files and timm's eval transform).
PUBLISHED = {
    'cifar10': dict(img_size=32, crop_pct=1.0, interpolation='bicubic',
                    mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616)),
    'cifar100': dict(img_size=32, crop_pct=1.0, interpolation='bicubic',  # CIFAR-10's normalisation, as published
                     mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616)),
    'imagenet': dict(img_size=224, crop_pct=1.0, interpolation='bicubic',
                     mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
}


def write_cifar100(root, train=8, test=8, seed=0):
    """CIFAR-100 python pickles (``cifar-100-python/train``, ``test``) of random images, fine labels 0..99."""
    rng = np.random.default_rng(seed)
    folder = root / 'cifar-100-python'
    folder.mkdir(parents=True)
    for name, n in (('train', train), ('test', test)):
        data = rng.integers(0, 256, (n, 3 * 32 * 32)).astype(np.uint8)
        (folder / name).write_bytes(pickle.dumps({'data': data, 'fine_labels': rng.integers(0, 100, n).tolist()}))
    return root


def write_imagenet(root, size=(300, 250), seed=0):
    """An ImageFolder tree (train/ and val/, 2 classes, 2 non-square images each) of random RGB images."""
    rng = np.random.default_rng(seed)
    for split in ('train', 'val'):
        for wnid in ('n01', 'n02'):
            (root / split / wnid).mkdir(parents=True)
            for i in range(2):
                array = rng.integers(0, 256, (size[1], size[0], 3)).astype(np.uint8)
                Image.fromarray(array).save(root / split / wnid / f'{i}.png')
    return root


def expected_pixels(image: Image.Image, img_size, crop_pct, interpolation, mean, std) -> torch.Tensor:
    """The published evaluation of one PIL image, computed here without timm or torchvision: the short side
    resized to floor(img_size / crop_pct) (the long side scaled alike, truncated), the centre img_size square
    (offsets rounded), then (pixel - 255 mean) / (255 std)."""
    short = math.floor(img_size / crop_pct)
    w, h = image.size
    size = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    if size != image.size:
        image = image.resize(size, INTERPOLATION[interpolation])
    w, h = image.size
    top, left = int(round((h - img_size) / 2.0)), int(round((w - img_size) / 2.0))
    array = np.asarray(image.crop((left, top, left + img_size, top + img_size)), dtype=np.float64)
    normalised = (array - 255 * np.asarray(mean)) / (255 * np.asarray(std))
    return torch.from_numpy(normalised).permute(2, 0, 1).float()


def raw_image(dataset, index) -> Image.Image:
    """Sample ``index`` of an evaluation data set as the PIL image before any transform."""
    if hasattr(dataset, 'images'):  # CIFAR, digits
        return Image.fromarray(dataset.images[index])
    return Image.open(dataset.reader[index][0]).convert('RGB')  # timm's ImageFolder reader: (path, target)


def check_eval_loader(loader, cfg, published):
    """The loader's transform objects and the pixels of its first batch are the published evaluation's."""
    dataset = loader.dataset.dataset  # the Shard's data set
    # the pixels first: a wrong transform fails on the numbers it gives
    images, targets = next(iter(loader))
    assert images.shape[1:] == (3, published['img_size'], published['img_size'])
    for i in range(images.shape[0]):
        expected = expected_pixels(raw_image(dataset, i), **published)
        torch.testing.assert_close(images[i].float(), expected, rtol=0, atol=2e-4, msg=f'image {i} of {cfg.dataset}')
    assert targets.tolist() == [int(dataset[i][1]) for i in range(len(targets))]  # in order, unshuffled
    steps = loader.dataset.transform.transforms
    assert [type(t).__name__ for t in steps] == ['Resize', 'CenterCrop', 'MaybePILToTensor']
    resize, crop = steps[0], steps[1]
    assert resize.size == math.floor(published['img_size'] / published['crop_pct'])
    assert resize.interpolation == transforms.InterpolationMode(published['interpolation'])
    assert list(crop.size) == [published['img_size']] * 2
    # the prefetcher normalises on the device, and erases nothing; the collate function mixes nothing
    for name in ('mean', 'std'):
        torch.testing.assert_close(getattr(loader, name).flatten().double(),
                                   255 * torch.tensor(published[name], dtype=torch.float64), rtol=0, atol=1e-4)
    assert loader.random_erasing is None and not isinstance(loader.loader.collate_fn, FastCollateMixup)
    assert loader.loader.sampler is None or type(loader.loader.sampler).__name__ == 'SequentialSampler'


@pytest.fixture(scope='module')
def roots(tmp_path_factory):
    root = tmp_path_factory.mktemp('eval_transforms')
    return dict(cifar10=write_cifar10(root / 'c10', 4, test=6), cifar100=write_cifar100(root / 'c100'),
                imagenet=write_imagenet(root / 'inet'))


CASES = {  # data set: (published config, overrides that keep it small but leave the evaluation keys alone)
    'cifar10': ('cifar10/cifar10.yml', []),
    'cifar100': ('cifar10/cifar100.yml', []),
    'imagenet': ('imagenet/imagenet.yml', ['--num-classes', '2']),
}


@pytest.mark.parametrize('dataset', CASES)
def test_the_evaluation_of_every_image_data_set_is_the_published_one(roots, dataset):
    """Both evaluation loaders (the one training evaluates with, and test.py's) on the published config."""
    config, extra = CASES[dataset]
    argv = ['--data-dir', str(roots[dataset]), '--workers', '0', '--val-batch-size', '4', '--batch-size', '2'] + extra
    cfg = load_config(argv, str(REPO / config))
    _, during_training, _ = build_loaders(cfg)
    check_eval_loader(during_training, cfg, PUBLISHED[dataset])
    check_eval_loader(build_eval_loader(load_config(argv, str(REPO / config))), cfg, PUBLISHED[dataset])


@pytest.mark.parametrize('crop_pct, interpolation', [(0.875, 'bicubic'), (0.9, 'bilinear')])
def test_crop_pct_and_interpolation_reach_the_evaluation(roots, crop_pct, interpolation):
    """A config's other crop_pct and interpolation are the ones evaluated with (a loader that ignored them would
    evaluate with the published 1.0 / bicubic, or timm's 0.875 / bilinear)."""
    argv = ['--data-dir', str(roots['imagenet']), '--workers', '0', '--val-batch-size', '4', '--num-classes', '2',
            '--img-size', '64', '--crop-pct', str(crop_pct), '--interpolation', interpolation]
    cfg = load_config(argv, str(REPO / 'imagenet' / 'imagenet.yml'))
    check_eval_loader(build_eval_loader(cfg), cfg, dict(PUBLISHED['imagenet'], img_size=64, crop_pct=crop_pct,
                                                        interpolation=interpolation))


def test_the_quick_start_digits_are_evaluated_unaugmented():
    cfg = load_config(['--val-batch-size', '4'], str(REPO / 'cifar10' / 'quickstart.yml'))
    from utils.data.loaders import DIGITS_MEAN, DIGITS_STD
    check_eval_loader(build_eval_loader(cfg), cfg, dict(img_size=16, crop_pct=1.0, interpolation='bicubic',
                                                        mean=DIGITS_MEAN, std=DIGITS_STD))


@pytest.mark.parametrize('dataset, config', [('dvs128-gesture', 'dvs128-gesture/dvs128gesture.yml'),
                                             ('cifar10-dvs', 'cifar10-dvs/cifar10dvs.yml')])
def test_event_data_are_evaluated_on_the_cached_frames(synthetic_roots, dataset, config):
    """test.py's loader of event data: the cached frames in order, untransformed, whatever dvs_augment says."""
    from utils.data.dvs_data import load_frames
    cfg = load_config(['--data-dir', str(synthetic_roots[dataset]), '--workers', '0', '--val-batch-size', '3',
                       '-T', '2'], str(REPO / config))
    loader = build_eval_loader(cfg)
    evaluation = loader.dataset.dataset
    assert evaluation.transform is None and cfg.dvs_augment
    frames, targets = next(iter(loader))
    for i in range(3):
        cached = torch.from_numpy(load_frames(evaluation.base.samples[evaluation.indices[i]][0])).float()
        torch.testing.assert_close(frames[i].float(), cached, rtol=0, atol=0)
        assert int(targets[i]) == int(evaluation[i][1])
