"""Recipe fidelity: every published row resolves to the effective published recipe (docs/recipe.md section 4, "What the
published runs actually did"), and the behaviours behind it: mixing order, mixup schedule, evaluation precision,
DVS augmentation bins, and the neuron's tau rounding."""
import os

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy

import models
from helpers import CIFAR10_YML, REPO, TINY_MODEL, EventFrames, write_cifar10
from utils.config import load_config
from utils.data.dvs_data import DVSAugment
from utils.data.loaders import build_loaders, mixes_in_loader, resolve_data_config, set_mixup_epoch
from utils.training import main as main_module
from utils.training.engine import train_loss_fn
from utils.training.factory import build_model

# ------------------------------------------------------------------ every published row, pinned with its source
# Sources: "YAML" = the published imagenet/imagenet.yml, cifar10/cifar10.yml or cifar100/cifar100.yml; "ARG" = an
# argparse default of the published train.py of that data set; "LOG" = the published training log; "CODE" = the
# published training code itself; "docs/recipe.md section N" = this repository's account of them.
IMAGES = dict(  # ImageNet and CIFAR rows: timm's training script, as published
    opt='adamw', sched='cosine', smoothing=0.1, amp=True,  # YAML
    opt_eps=1e-8,  # ARG --opt-eps None: timm's AdamW default
    lr=5e-4, min_lr=1e-5, warmup_epochs=20, cooldown_epochs=10,  # YAML (LOG: 8-768 ran lr 5e-4 at global batch 192)
    scale=(1.0, 1.0), crop_pct=1.0, interpolation='bicubic',  # YAML (train_interpolation: bicubic too)
    ratio=(1.0, 1.0),  # ImageNet: ARG --ratio [1.0, 1.0] (never set in its YAML); CIFAR: YAML ratio [1.0, 1.0]
    hflip=0.5, recount=1, cutmix_minmax=None,  # ARG
    reprob=0.25, remode='const',  # YAML
    aa_ops='timm',  # CODE: timm's RandAugment op list (Spikformer's CIFAR code: 5 ops, its cifar10/aa_snn.py)
    mixup_prob=1.0, mixup_switch_prob=0.5, mixup_mode='batch',  # YAML
    model_ema=False, seed=42,  # ARG
    eval_amp=True,  # CODE: validate() runs the model under amp_autocast
    dist_bn='broadcast',  # ARG --dist-bn '': no averaging; DDP broadcasts rank 0's buffers (docs/recipe.md section 4)
)
IMAGENET = dict(
    IMAGES, dataset='imagenet', num_classes=1000, img_size=224, epochs=300,  # YAML
    mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),  # YAML
    weight_decay=0.05, warmup_lr=1e-6, aa='rand-m9-mstd0.5-inc1',  # YAML
    mixup=0.8, cutmix=1.0, mixup_off_epoch=None,  # YAML (mixup_off_epoch: 0 = never)
    color_jitter=0.4,  # ARG; timm ignores it when aa is set
    time_steps=4,  # ARG -T 4
)
CIFAR = dict(
    IMAGES, img_size=32, batch_size=64, val_batch_size=64,  # YAML
    mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),  # YAML
    weight_decay=0.06, warmup_lr=1e-5, aa='rand-m9-n1-mstd0.4-inc1', color_jitter=0.0,  # YAML
    mixup=0.5, cutmix=0.0,  # YAML
    mixup_off_epoch=None,  # YAML says 200, but CODE: the flag never reached the persistent workers (recipe.md 4)
    time_steps=4,  # YAML time_step: 4
)
DVS = dict(  # dvs128-gesture/train.py and cifar10-dvs/train.py, all ARG unless noted
    batch_size=16, val_batch_size=16,  # ARG -b 16; CODE: the test loader uses args.batch_size
    opt='adamw', opt_eps=1e-8, weight_decay=0.06, lr=1e-3, sched='cosine',
    warmup_epochs=10, warmup_lr=1e-5, min_lr=1e-5, cooldown_epochs=10,
    mixup=0.5, cutmix=0.0, cutmix_minmax=None, mixup_prob=0.5, mixup_switch_prob=0.5, mixup_mode='batch',
    smoothing=0.1, amp=True,
    mixup_off_epoch=75,  # CODE: `if epoch >= 75: mixup_fn.mixup_enabled = False` (in the main process: effective)
    seed=2021,  # CODE: _seed_ = 2021
    eval_amp=False,  # CODE: evaluate() has no autocast
    dvs_augment=True, model_ema=False,  # CODE: flip + SNNAugmentWide on every training sample; no EMA
)
ROWS = {  # config: (expected values, architecture (depths, embed_dims, heads, classes, T, tau))
    'imagenet/spikingformer_8_384.yml': (dict(IMAGENET, model='spikingformer_8_384', num_heads=8,  # YAML heads
                                              batch_size=36, val_batch_size=36),  # YAML; no log of this run
                                         (8, 384, 8, 1000, 4, 2.0)),  # docs/recipe.md section 3
    'imagenet/spikingformer_8_512.yml': (dict(IMAGENET, model='spikingformer_8_512', num_heads=8,
                                              batch_size=36, val_batch_size=36),  # YAML; LOG 4,448 it/epoch, 174
                                         (8, 512, 8, 1000, 4, 2.0)),  # evaluation batches of 6,250 per rank
    'imagenet/imagenet.yml': (dict(IMAGENET, model='spikingformer_8_768', num_heads=8,
                                   batch_size=24, val_batch_size=24),  # LOG 6,672 it/epoch, 261 eval batches
                              (8, 768, 8, 1000, 4, 2.0)),
    'cifar10/cifar10_4_256.yml': (dict(CIFAR, dataset='cifar10', num_classes=10, epochs=300),  # paper: 300 epochs
                                  (4, 256, 16, 10, 4, 2.0)),  # docs/recipe.md section 3 (heads not published)
    'cifar10/cifar10_2_384.yml': (dict(CIFAR, dataset='cifar10', num_classes=10, epochs=300),
                                  (2, 384, 12, 10, 4, 2.0)),
    'cifar10/cifar10_4_384.yml': (dict(CIFAR, dataset='cifar10', num_classes=10, epochs=300),
                                  (4, 384, 12, 10, 4, 2.0)),  # YAML num_heads 12
    'cifar10/cifar10.yml': (dict(CIFAR, dataset='cifar10', num_classes=10, epochs=400),  # YAML epochs 400
                            (4, 384, 12, 10, 4, 2.0)),
    'cifar10/cifar100_4_256.yml': (dict(CIFAR, dataset='cifar100', num_classes=100, epochs=300),
                                   (4, 256, 16, 100, 4, 2.0)),
    'cifar10/cifar100_2_384.yml': (dict(CIFAR, dataset='cifar100', num_classes=100, epochs=300),
                                   (2, 384, 12, 100, 4, 2.0)),
    'cifar10/cifar100_4_384.yml': (dict(CIFAR, dataset='cifar100', num_classes=100, epochs=300),
                                   (4, 384, 8, 100, 4, 2.0)),  # cifar100.yml num_heads 8
    'cifar10/cifar100.yml': (dict(CIFAR, dataset='cifar100', num_classes=100, epochs=400),  # cifar100.yml
                             (4, 384, 8, 100, 4, 2.0)),
    'dvs128-gesture/dvs128gesture.yml': (dict(DVS, dataset='dvs128-gesture', num_classes=11, epochs=192),  # ARG
                                         (2, 256, 16, 11, 16, 1.5)),  # ARG --T 16; recipe.md 1, 3: tau 1.5
    'dvs128-gesture/dvs128gesture_t10.yml': (dict(DVS, dataset='dvs128-gesture', num_classes=11, epochs=192),
                                             (2, 256, 16, 11, 10, 1.5)),  # paper's T=10 row
    'cifar10-dvs/cifar10dvs.yml': (dict(DVS, dataset='cifar10-dvs', num_classes=10, epochs=96),  # ARG epochs 96
                                   (2, 256, 16, 10, 16, 1.5)),
    'cifar10-dvs/cifar10dvs_t10.yml': (dict(DVS, dataset='cifar10-dvs', num_classes=10, epochs=96),
                                       (2, 256, 16, 10, 10, 1.5)),
    # The Spikformer baseline (ZK-Zhou/spikformer; docs/spikformer.md): its cifar10/cifar10.yml, imagenet/imagenet.yml
    # and cifar10dvs/train.py, by the same rules. Every neuron has tau 2.0 in all three (its DVS file too).
    'cifar10/spikformer_cifar10_4_384.yml': (dict(CIFAR, model='spikformer_cifar_4_384', dataset='cifar10',
                                                  num_classes=10, epochs=300,  # YAML epochs 300
                                                  batch_size=128, val_batch_size=128, workers=16,  # YAML
                                                  aa_ops='spikformer'),  # CODE: cifar10/aa_snn.py's 5 ops
                                             (4, 384, 12, 10, 4, 2.0)),  # YAML layer 4, dim 384, num_heads 12
    'imagenet/spikformer_8_512.yml': (dict(IMAGENET, model='spikformer_8_512', num_heads=8,  # CODE: registered model
                                           batch_size=24, val_batch_size=24,  # YAML; README: 8 processes
                                           ratio=(0.75, 4 / 3)),  # ARG --ratio [3/4, 4/3] (never set in its YAML)
                                      (8, 512, 8, 1000, 4, 2.0)),  # CODE: embed 512, depth 8; forward's T = 4
    'cifar10-dvs/spikformer_cifar10dvs.yml': (dict(DVS, model='spikformer_dvs_2_256', dataset='cifar10-dvs',
                                                   num_classes=10, epochs=96),  # ARG
                                              (2, 256, 16, 10, 16, 2.0)),  # ARG --T 16; CODE: tau 2.0
}


@pytest.mark.parametrize('config', ROWS)
def test_every_published_row_resolves_to_the_effective_recipe(config):
    expected, architecture = ROWS[config]
    cfg = load_config([], str(REPO / config))
    resolve_data_config(cfg)  # what the engine does first: args.yaml shows these resolved values
    assert {k: getattr(cfg, k) for k in expected} == expected
    with torch.device('meta'):  # the model the config builds, without allocating it
        model = build_model(cfg)
    assert (model.depths, model.embed_dims, model.num_heads, model.num_classes, model.T, model.tau) == architecture


def test_the_table_covers_every_published_config():
    published = {str(p.relative_to(REPO)) for d in ('imagenet', 'cifar10', 'dvs128-gesture', 'cifar10-dvs')
                 for p in (REPO / d).glob('*.yml') if p.name not in ('quickstart.yml', 'synthetic.yml')}
    assert published == set(ROWS) and len(ROWS) == 18


def test_imagenet_crop_is_the_centre_square(tmp_path):
    """ratio (1, 1) with scale (1, 1): the random-resized crop always falls back to the centre square of the short
    side (no aspect distortion); timm's default ratio (3/4, 4/3) would squash the whole image instead."""
    for split in ('train', 'val'):
        for wnid in ('n01', 'n02'):
            (tmp_path / split / wnid).mkdir(parents=True)
            Image.new('RGB', (48, 40)).save(tmp_path / split / wnid / '0.png')
    cfg = load_config(['--data-dir', str(tmp_path), '--workers', '0', '--batch-size', '2', '--num-classes', '2'],
                      str(REPO / 'imagenet' / 'imagenet.yml'))
    train_loader, _, _ = build_loaders(cfg)
    crop = train_loader.dataset.transform.transforms[0]
    assert type(crop).__name__ == 'RandomResizedCropAndInterpolation'
    image = Image.new('RGB', (500, 375))
    assert {crop.get_params(image, crop.scale, crop.ratio) for _ in range(50)} == {(0, 62, 375, 375)}


# ------------------------------------------------------------------ mixing: where, in which order, until when
def soft_targets_are_mixed(targets: torch.Tensor, smoothing: float = 0.1) -> bool:
    """Whether any row is more than a smoothed one-hot (labels of the batch's pairs differ almost surely)."""
    off = smoothing / targets.shape[1]
    return bool(((targets > off + 1e-6).sum(dim=1) > 1).any())


def test_cifar_configs_mix_at_epoch_250_and_the_switch_reaches_the_workers(tmp_path):
    data = write_cifar10(tmp_path / 'cifar', 8, test=4)
    argv = ['--data-dir', str(data), '--workers', '1', '--batch-size', '16', '--aa', 'null']
    for config in ('cifar10.yml', 'cifar100_4_384.yml'):
        cfg = load_config(argv + ['--dataset', 'cifar10', '--num-classes', '10'], str(REPO / 'cifar10' / config))
        train_loader, _, mixup_fn = build_loaders(cfg)
        assert mixes_in_loader(mixup_fn) and isinstance(train_loss_fn(mixup_fn, cfg.smoothing), SoftTargetCrossEntropy)
        set_mixup_epoch(mixup_fn, cfg, 250)
        assert soft_targets_are_mixed(next(iter(train_loader))[1]), config  # mixed in the cooldown too
    # what the published YAML intended: off from epoch 200, in the worker process of a fresh iterator each epoch
    cfg = load_config(argv + ['--mixup-off-epoch', '200'], CIFAR10_YML)
    train_loader, _, mixup_fn = build_loaders(cfg)
    for epoch, mixed in ((199, True), (200, False), (250, False)):
        set_mixup_epoch(mixup_fn, cfg, epoch)
        _, targets = next(iter(train_loader))
        assert soft_targets_are_mixed(targets) == mixed, epoch
        if not mixed:  # still smoothed one-hot targets for SoftTargetCrossEntropy
            assert torch.allclose(targets.max(dim=1).values, torch.tensor(0.9 + 0.1 / 10))


def test_image_batches_are_not_mixed_twice(tmp_path, monkeypatch):
    """Images are mixed by the loader's collate function only: the engine's batch Mixup never runs on them."""
    def forbidden(self, x, target):
        raise AssertionError('an image batch was mixed again in the main process')

    monkeypatch.setattr(Mixup, '__call__', forbidden)  # FastCollateMixup has its own __call__
    data = write_cifar10(tmp_path / 'cifar', 8, test=8)
    result = main_module.train_main(
        ['--config', CIFAR10_YML, '--data-dir', str(data), '--output', str(tmp_path / 'r'), '-T', '1', '--img-size',
         '16', '--batch-size', '8', '--workers', '0', '--no-amp', '--epochs', '1', '--cooldown-epochs', '0',
         '--limit-train-batches', '1'] + TINY_MODEL)
    assert result['best_epoch'] == 0


def test_random_erasing_comes_after_mixing(tmp_path):
    """As published: mix the uint8 batch, normalise, then erase, so an erased box holds exactly the constant fill (0
    after normalisation). Erasing each sample before mixing would blend its box with the partner image."""
    levels = np.linspace(20, 230, 16).round()
    data = write_cifar10(tmp_path, flat_levels=levels)
    cfg = load_config(['--data-dir', str(data), '--workers', '0', '--batch-size', '16', '--aa', 'null',
                       '--hflip', '0', '--reprob', '1'], CIFAR10_YML)
    train_loader, _, _ = build_loaders(cfg)
    images, targets = next(iter(train_loader))
    assert soft_targets_are_mixed(targets)
    mean = torch.tensor(cfg.mean).view(3, 1, 1) * 255
    std = torch.tensor(cfg.std).view(3, 1, 1) * 255
    for image in images:
        erased = (image == 0).all(dim=0)
        rows, cols = erased.any(dim=1).nonzero().flatten(), erased.any(dim=0).nonzero().flatten()
        assert len(rows) and erased[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()  # one exact box
        assert erased.sum() == len(rows) * len(cols)
        outside = image[:, ~erased]  # the mixed flat image, normalised: one uint8 level (rounded), never 0
        level = outside[0, 0] * std[0, 0, 0] + mean[0, 0, 0]
        torch.testing.assert_close(outside, ((level.round() - mean) / std).view(3, 1).expand_as(outside))
    unmixed = torch.tensor(levels, dtype=torch.float32)
    mixed_levels = images[:, 0].amax(dim=(1, 2)) * std[0, 0, 0] + mean[0, 0, 0]
    assert not torch.isclose(mixed_levels.round(), unmixed, atol=0.5).all()  # the partner image is blended in


# ------------------------------------------------------------------ evaluation precision
def test_evaluation_precision_is_resolved_as_published():
    for config, expected in (('cifar10/cifar10.yml', True), ('imagenet/imagenet.yml', True),
                             ('dvs128-gesture/dvs128gesture.yml', False), ('cifar10-dvs/cifar10dvs.yml', False)):
        cfg = load_config([], str(REPO / config))
        assert cfg.eval_amp is None and cfg.amp is True
        resolve_data_config(cfg)
        assert cfg.eval_amp is expected, config
    cfg = load_config(['--eval-amp', 'true'], str(REPO / 'dvs128-gesture' / 'dvs128gesture.yml'))
    resolve_data_config(cfg)
    assert cfg.eval_amp is True


def test_event_data_evaluate_in_float32_under_an_amp_config(tmp_path, monkeypatch):
    """The DVS configs train under AMP (bfloat16 on CPU) and evaluate in float32, in train.py and test.py alike."""
    import utils.data.dvs_data
    monkeypatch.setattr(utils.data.dvs_data, 'build_dvs_datasets', lambda cfg: (EventFrames(8), EventFrames(4)))
    seen = {'train': set(), 'eval': set()}
    real_evaluate = main_module.evaluate

    def spy(model, loader, device, **kwargs):
        hook = model.head.register_forward_hook(
            lambda m, i, o: seen['eval'].add((torch.is_autocast_enabled('cpu'), o.dtype)))
        try:
            return real_evaluate(model, loader, device, **kwargs)
        finally:
            hook.remove()

    monkeypatch.setattr(main_module, 'evaluate', spy)
    real_build = main_module.build_model

    def record_training(module, inputs, output):
        if module.training:
            seen['train'].add((torch.is_autocast_enabled('cpu'), output.dtype))

    def build(cfg, **kwargs):
        model = real_build(cfg, **kwargs)
        model.head.register_forward_hook(record_training)
        return model

    monkeypatch.setattr(main_module, 'build_model', build)
    out = tmp_path / 'run'
    main_module.train_main(['--output', str(out), '-T', '2', '--embed-dims', '32', '--depths', '1', '--num-heads',
                            '2', '--batch-size', '4', '--val-batch-size', '4', '--workers', '0', '--epochs', '1',
                            '--cooldown-epochs', '0', '--device', 'cpu'],
                           str(REPO / 'dvs128-gesture' / 'dvs128gesture.yml'))
    assert seen['train'] == {(True, torch.bfloat16)} and seen['eval'] == {(False, torch.float32)}
    assert load_config(['--config', str(out / 'args.yaml')]).eval_amp is False
    assert 'amp bfloat16, evaluation in float32' in (out / 'log.txt').read_text()
    seen['eval'].clear()
    main_module.test_main(['--checkpoint', str(out / 'last.pth.tar'), '--output', str(tmp_path / 'test')])
    assert seen['eval'] == {(False, torch.float32)}


# BatchNorm statistics across ranks: rank 0's by default, the average with --dist-bn reduce, in a 2-process training
# run (tests/test_slurm.py::test_batchnorm_statistics_are_rank_0s_by_default).


# ------------------------------------------------------------------ DVS augmentation magnitudes
def test_dvs_magnitudes_are_31_signed_bins_then_a_random_sign():
    g = torch.Generator().manual_seed(0)
    aug = DVSAugment()
    draws = [aug.sample(128, 128, g) for _ in range(6000)]
    for op, top in (('shear_x', 0.3), ('translate_x', 5.0), ('translate_y', 5.0), ('rotate', 30.0)):
        bins = torch.linspace(-top, top, 31)
        assert torch.equal(aug.bins(op), bins)
        mags = np.array([d['magnitude'] for d in draws if d['op'] == op])
        allowed = set(bins.tolist()) | set((-bins).tolist())
        assert set(mags.tolist()) <= allowed and len(set(np.abs(mags).tolist())) == 16  # |m|: 0, max/15, ..., max
        middle = abs(bins[15].item())  # float32 linspace: 0 for the translations and rotation, 9.3e-9 for shear
        assert abs(np.mean(np.abs(mags) == middle) - 1 / 31) < 0.025 and abs(np.mean(mags > middle) - 15 / 31) < 0.06
    assert all(d['magnitude'] == 0 and d['erase'] is not None for d in draws if d['op'] == 'cutout')


# ------------------------------------------------------------------ the neuron's tau: division or reciprocal
def reciprocal_lif_spikes(x_seq: torch.Tensor, tau: float, v_threshold: float, fused: bool) -> torch.Tensor:
    """Spikes of SpikingJelly's CuPy LIF kernel arithmetic, ``h = v + float32(1/tau) * (x - v)``: rounded after the
    product and after the sum (``fused=False``), or once, as the fused multiply-add CUDA compilers emit for it
    (``fused=True``, computed exactly in float64: a float32 product is exact there)."""
    reciprocal = torch.tensor(1.0 / tau, dtype=torch.float32)
    v = torch.zeros_like(x_seq[0])
    spikes = torch.empty_like(x_seq)
    for t in range(x_seq.shape[0]):
        d = x_seq[t] - v
        h = (v.double() + d.double() * reciprocal.double()).float() if fused else v + d * reciprocal
        spikes[t] = h >= v_threshold
        v = torch.where(h >= v_threshold, torch.zeros_like(h), h)
    return spikes


def test_tau_division_against_the_cupy_reciprocal(capsys):
    """Our 'fused' and 'torch' neurons divide by tau; the CuPy kernel of the published runs multiplies by
    float32(1/tau). Every neuron of the DVS model (tau 1.5; T=16, Poisson event counts, BatchNorm on batch
    statistics: firing rates of 0.1-15%) is fed its own input again through the reciprocal arithmetic: the charges
    differ in about a third of the steps, the spikes almost never, and the count is printed. For tau 2 (images)
    the two are the same arithmetic. TAU_TEST_DRAWS / TAU_TEST_SAMPLES (default 1 / 1) enlarge the measurement:
    docs/differences.md's figure is TAU_TEST_DRAWS=4 TAU_TEST_SAMPLES=4."""
    draws, samples = int(os.environ.get('TAU_TEST_DRAWS', 1)), int(os.environ.get('TAU_TEST_SAMPLES', 1))
    cfg = load_config([], str(REPO / 'dvs128-gesture' / 'dvs128gesture.yml'))
    steps = flips_mul = flips_fma = 0
    for draw in range(draws):
        torch.manual_seed(draw)
        model = models.set_backend(build_model(cfg), 'fused').train()
        x = torch.poisson(torch.full((samples, 16, 2, 128, 128), 0.5))  # event counts, T=16
        seen = {}
        hooks = [m.register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, (m, i[0], o)))
                 for n, m in model.named_modules() if isinstance(m, models.LIF)]
        with torch.no_grad():
            model(x)
        for hook in hooks:
            hook.remove()
        for name, (lif, inputs, spikes) in seen.items():
            assert lif.tau == 1.5
            steps += spikes.numel()
            flips_mul += (reciprocal_lif_spikes(inputs, 1.5, lif.v_threshold, False) != spikes).sum().item()
            flips_fma += (reciprocal_lif_spikes(inputs, 1.5, lif.v_threshold, True) != spikes).sum().item()
            if draw == 0:  # tau 2: 1/2 is exact, so multiplying is dividing
                assert torch.equal(reciprocal_lif_spikes(inputs, 2.0, lif.v_threshold, True),
                                   models.fused_lif.fused_lif(inputs, 2.0, lif.v_threshold))
        first = seen['patch_embed.stages.0.lif'][1][0]
        assert ((first / 1.5) != first * torch.tensor(1 / 1.5)).float().mean() > 0.2  # the arithmetic does differ
    assert steps >= draws * samples * 2e7 and flips_mul / steps < 1e-6 and flips_fma / steps < 1e-6
    with capsys.disabled():
        print(f'\ntau 1.5, {steps:,} neuron steps: {flips_mul} spikes differ (multiply, then add), '
              f'{flips_fma} (fused multiply-add)')
