"""Defaults nobody's config exercises: every published value that the published runs took from an argparse or
library default (rather than from their YAML) comes, here too, from this project's defaults (the schema's, or the
data set's in ``utils.data.loaders.DATASETS``) when the config leaves the key out.

Every shipped config writes most keys out, so the published rows (tests/test_recipe.py) pass whatever the defaults
are. Here each published config is loaded with the keys of :data:`FROM_DEFAULTS` removed, and must still resolve to
its whole published row; the effective values are also read back from the loaders (crop ratio and scale,
normalisation, evaluation crop) for CIFAR-100, whose published normalisation is CIFAR-10's."""
import pytest
import yaml

from helpers import REPO
from test_eval_transforms import write_cifar100
from test_recipe import ROWS
from utils.config import load_config
from utils.data.loaders import build_loaders, resolve_data_config

IMAGE_DEFAULTS = (
    # argparse defaults of the published train.py (never set in the published YAML of ImageNet)
    'opt_eps', 'ratio', 'hflip', 'recount', 'cutmix_minmax', 'model_ema', 'seed', 'dist_bn', 'eval_amp',
    # library defaults the published recipe shares (timm's pipeline: crop, erasing, mixup, loss, schedule)
    'aa_ops', 'crop_pct', 'scale', 'interpolation', 'reprob', 'remode', 'mixup_prob', 'mixup_switch_prob', 'mixup_mode',
    'smoothing', 'opt', 'sched', 'lr', 'min_lr', 'warmup_epochs', 'cooldown_epochs', 'amp', 'time_steps',
    # the data set's own: classes, input size, normalisation (CIFAR-100: CIFAR-10's), evaluation batch = batch
    'num_classes', 'img_size', 'mean', 'std', 'val_batch_size', 'mixup_off_epoch')
FROM_DEFAULTS = {
    'imagenet': IMAGE_DEFAULTS,
    'cifar': IMAGE_DEFAULTS + ('batch_size', 'weight_decay', 'warmup_lr', 'color_jitter', 'cutmix'),  # CIFAR's
    # The Spikformer baseline's configs write out what differs from Spikingformer's published defaults: its CIFAR
    # batch (128) and 5-op RandAugment, its ImageNet crop ratio (timm's (3/4, 4/3)); docs/spikformer.md
    'spikformer_cifar': tuple(k for k in IMAGE_DEFAULTS if k != 'aa_ops') + ('weight_decay', 'warmup_lr',
                                                                              'color_jitter', 'cutmix'),
    'spikformer_imagenet': tuple(k for k in IMAGE_DEFAULTS if k != 'ratio'),
    'dvs': ('opt', 'opt_eps', 'weight_decay', 'sched', 'min_lr', 'warmup_lr', 'cooldown_epochs', 'cutmix',
            'cutmix_minmax', 'mixup_switch_prob', 'mixup_mode', 'smoothing', 'amp', 'eval_amp', 'dvs_augment',
            'model_ema', 'num_classes', 'val_batch_size'),
}


def family(config: str) -> str:
    folder, name = config.split('/')
    if folder in ('cifar10', 'imagenet') and name.startswith('spikformer_'):
        return {'cifar10': 'spikformer_cifar', 'imagenet': 'spikformer_imagenet'}[folder]
    return {'imagenet': 'imagenet', 'cifar10': 'cifar'}.get(folder, 'dvs')


def without(config: str, keys, tmp_path) -> str:
    """The published config file less ``keys``, written to ``tmp_path``; returns its path."""
    with open(REPO / config) as f:
        values = yaml.safe_load(f)
    path = tmp_path / config.replace('/', '_')
    path.write_text(yaml.safe_dump({k: v for k, v in values.items() if k not in keys}))
    return str(path)


@pytest.mark.parametrize('config', ROWS)
def test_a_published_row_resolves_with_its_default_keys_left_out(config, tmp_path):
    expected, _ = ROWS[config]
    cfg = load_config([], without(config, FROM_DEFAULTS[family(config)], tmp_path))
    resolve_data_config(cfg)
    assert {k: getattr(cfg, k) for k in expected} == expected


# Keys a config always names, whatever their default: the data set of the row, and the schedule's length (300 or
# 400 epochs among rows of one family).
ALWAYS_WRITTEN = ('dataset', 'epochs')


@pytest.mark.parametrize('config', ROWS)
def test_every_published_value_equal_to_a_default_is_in_the_list(config, tmp_path):
    """The lists above miss no key: any published value that the defaults give is left out in the test above."""
    expected, _ = ROWS[config]
    cfg = load_config([], without(config, set(expected), tmp_path))
    resolve_data_config(cfg)
    defaulted = {k for k in expected if getattr(cfg, k) == expected[k]} - set(ALWAYS_WRITTEN)
    assert defaulted <= set(FROM_DEFAULTS[family(config)]), sorted(defaulted - set(FROM_DEFAULTS[family(config)]))


def test_cifar100_trains_and_evaluates_with_the_published_defaults(tmp_path):
    """cifar100.yml less its default keys, through the loaders: the centre square (ratio (1, 1), scale (1, 1)),
    CIFAR-10's normalisation, crop_pct 1.0 at evaluation."""
    data = write_cifar100(tmp_path / 'c100', train=8, test=4)
    path = without('cifar10/cifar100.yml', FROM_DEFAULTS['cifar'], tmp_path)
    cfg = load_config(['--data-dir', str(data), '--workers', '0', '--batch-size', '4'], path)
    train_loader, eval_loader, _ = build_loaders(cfg)
    crop = train_loader.dataset.transform.transforms[0]
    assert (tuple(crop.scale), tuple(crop.ratio)) == ((1.0, 1.0), (1.0, 1.0))
    for loader in (train_loader, eval_loader):
        assert loader.mean.flatten().tolist() == pytest.approx([255 * x for x in (0.4914, 0.4822, 0.4465)], abs=1e-3)
        assert loader.std.flatten().tolist() == pytest.approx([255 * x for x in (0.2470, 0.2435, 0.2616)], abs=1e-3)
    assert eval_loader.dataset.transform.transforms[0].size == 32  # floor(32 / crop_pct 1.0)
