"""The recipe as the training loop receives it: each key that changes the numbers, observed on the objects that
``utils.training.main`` hands to ``train_one_epoch`` in a real (tiny) run, not on the config.

``train_one_epoch`` is replaced, for a run, by a spy that records its arguments and hooks into the model, then trains
as usual. tests/test_recipe.py pins each published config's resolved values; these tests pin that the values reach
the loop. Where a published value equals the library's default (timm's Mixup smoothing 0.1, mixing probability 1,
switch probability 0.5; random erasing 'const', count 1; the scheduler's warmup_lr 1e-5; CPU autocast's bfloat16),
a run would not notice it being dropped, so the runs here override it with another value.
"""
import copy
import math

import numpy as np
import pytest
import torch
from timm.data import FastCollateMixup
from torch import nn

import models
from helpers import CIFAR10_YML, REPO, TINY_MODEL, EventFrames, write_cifar10
from utils.training import main as main_module
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)


def mixing_collate(loader):
    """The training loader's collate function when it mixes (images), else None."""
    collate = getattr(getattr(loader, 'loader', loader), 'collate_fn', None)
    collate = getattr(collate, 'collate', collate)  # inside utils.data.resumable_data's keyed (per-batch) seeding
    return collate if isinstance(collate, FastCollateMixup) else None


class LoopSpy:
    """Stands in for ``utils.training.main.train_one_epoch``: records what each call receives, observes the first call's
    training step (the time steps and the autocast state inside the model, the EMA update), then trains as usual."""

    def __init__(self):
        self.calls, self.steps, self.autocast, self.eval_loaders = [], set(), set(), []
        self.ema_before = self.ema_after = self.model_after = None
        self.real = main_module.train_one_epoch

    def __call__(self, model, loader, optimizer, loss_fn, device, epoch, **kwargs):
        mixer = kwargs.get('mixup_fn') or mixing_collate(loader)
        self.calls.append(dict(kwargs, model=model, loader=loader, optimizer=optimizer, loss_fn=loss_fn, epoch=epoch,
                               lrs=[group['lr'] for group in optimizer.param_groups],
                               mixing=getattr(mixer, 'mixup_enabled', None)))
        if len(self.calls) > 1:
            return self.real(model, loader, optimizer, loss_fn, device, epoch, **kwargs)
        ema = kwargs.get('ema')
        if ema is not None:
            self.ema_before = copy.deepcopy(dict(ema.module.named_parameters()))
        hooks = [m.register_forward_hook(self._record_steps) for m in model.modules() if isinstance(m, models.LIF)]
        first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        hooks.append(first_conv.register_forward_hook(self._record_autocast))
        default = torch.get_autocast_dtype('cpu')
        # CPU autocast's default is bfloat16: another default shows whether the loop's dtype is passed explicitly
        torch.set_autocast_dtype('cpu', torch.float16)
        try:
            result = self.real(model, loader, optimizer, loss_fn, device, epoch, **kwargs)
        finally:
            torch.set_autocast_dtype('cpu', default)
            for hook in hooks:
                hook.remove()
        if ema is not None:
            self.ema_after = copy.deepcopy(dict(ema.module.named_parameters()))
            self.model_after = copy.deepcopy(dict(model.named_parameters()))
        return result

    def _record_steps(self, module, inputs, output):
        if module.training:
            self.steps.add(inputs[0].shape[0])

    def _record_autocast(self, module, inputs, output):
        if module.training:
            self.autocast.add((torch.is_autocast_enabled('cpu'), torch.get_autocast_dtype('cpu'), output.dtype))


def spied_run(argv, default_config=None, patches=()) -> LoopSpy:
    """``train_main(argv, default_config)`` with the spy in the loop (and ``spy.eval_loaders``: the loaders that
    ``evaluate`` is given); ``patches``: further ``(object, name, value)`` to set for the run."""
    spy = LoopSpy()
    real_evaluate = main_module.evaluate

    def evaluate(model, loader, *args, **kwargs):
        spy.eval_loaders.append(loader)
        return real_evaluate(model, loader, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(main_module, 'train_one_epoch', spy)
        mp.setattr(main_module, 'evaluate', evaluate)
        for target, name, value in patches:
            mp.setattr(target, name, value)
        main_module.train_main(argv, default_config)
    return spy


# The image run: cifar10.yml (mixup 0.5, reprob 0.25, weight decay 0.06, lr 5e-4, min_lr 1e-5), overriding the
# epochs (6 + 2 cooldown, 2 warmup) and the values a dropped key would not change (see the module's docstring).
IMAGE_RECIPE = dict(smoothing=0.2, mixup=0.5, cutmix=1.5, mixup_prob=0.7, mixup_switch_prob=0.3, reprob=0.25,
                    remode='pixel', recount=2, weight_decay=0.06, lr=5e-4, min_lr=1e-5, warmup_lr=1e-4,
                    warmup_epochs=2, epochs=6, cooldown_epochs=2, model_ema_decay=0.5, time_steps=2)


@pytest.fixture(scope='module')
def image_run(tmp_path_factory):
    root = tmp_path_factory.mktemp('wiring')
    data = write_cifar10(root / 'cifar', 16, test=16)
    r = IMAGE_RECIPE
    argv = ['--config', CIFAR10_YML, '--data-dir', str(data), '--output', str(root / 'run')] + TINY_MODEL + [
        '-T', str(r['time_steps']), '--img-size', '16', '--batch-size', '8', '--val-batch-size', '16', '--workers',
        '0', '--limit-train-batches', '1', '--limit-eval-batches', '1', '--amp', 'true', '--amp-dtype', 'bfloat16',
        '--model-ema', '--model-ema-decay', str(r['model_ema_decay']), '--smoothing', str(r['smoothing']),
        '--cutmix', str(r['cutmix']), '--mixup-prob', str(r['mixup_prob']), '--mixup-switch-prob',
        str(r['mixup_switch_prob']), '--remode', r['remode'], '--recount', str(r['recount']), '--warmup-lr',
        str(r['warmup_lr']), '--epochs', str(r['epochs']), '--warmup-epochs', str(r['warmup_epochs']),
        '--cooldown-epochs', str(r['cooldown_epochs'])]
    return spied_run(argv)


# ------------------------------------------------------------------ mixing and label smoothing
def smoothed(label: int, classes: int, smoothing: float) -> torch.Tensor:
    """The smoothed one-hot target: s / classes everywhere, plus 1 - s on the label."""
    target = torch.full((classes,), smoothing / classes)
    target[label] += 1 - smoothing
    return target


def mixing_statistics(mix, draws: int, classes: int, smoothing: float) -> dict:
    """Mix a known batch ``draws`` times with the loop's mixing object: two 32x32 images, all 0 (label 2) and all
    255 (label 7). Each draw's lambda comes from the first target row; it must be the lambda-mixture of the two
    smoothed one-hot targets, and agree with the first image (a blend of level 255 (1 - lambda), or a cutmix box of
    area 1 - lambda). Returns the share of mixed draws, the share of cutmix among them, and the mean
    lambda (1 - lambda) of the blends (a / (4a + 2) for mixup alpha a)."""
    state = np.random.get_state()
    np.random.seed(0)  # timm draws from NumPy's global generator
    mix = getattr(mix, 'function', mix)  # the Mixup itself, without utils.data.resumable_data's per-batch seeding
    try:
        return _mixing_statistics(mix, draws, classes, smoothing)
    finally:
        np.random.set_state(state)


def _mixing_statistics(mix, draws: int, classes: int, smoothing: float) -> dict:
    dark, bright = smoothed(2, classes, smoothing), smoothed(7, classes, smoothing)
    mixed = cut = 0
    blend_spread = []
    for _ in range(draws):
        if isinstance(mix, FastCollateMixup):  # images: the training loader's collate function
            batch = [(np.zeros((1, 32, 32), np.uint8), 2), (np.full((1, 32, 32), 255, np.uint8), 7)]
            images, targets = mix(batch)
        else:  # event frames: the engine's batch Mixup on [B, T, C, H, W]
            images = torch.stack([torch.zeros(1, 1, 32, 32), torch.full((1, 1, 32, 32), 255.0)])
            images, targets = mix(images, torch.tensor([2, 7]))
        assert targets.shape == (2, classes)
        lam = ((targets[0, 2] - dark[7]) / (dark[2] - dark[7])).item()
        torch.testing.assert_close(targets[0], lam * dark + (1 - lam) * bright)
        first = images[0].float()
        if lam > 1 - 1e-6:
            assert (first == 0).all()
            continue
        mixed += 1
        levels = set(first.unique().tolist())
        if levels == {0.0, 255.0}:  # a box of the partner image
            cut += 1
            assert (first == 255).float().mean().item() == pytest.approx(1 - lam, abs=1e-6)
        else:
            assert len(levels) == 1 and abs(levels.pop() - 255 * (1 - lam)) <= 0.5
            blend_spread.append(lam * (1 - lam))
    return dict(mixed=mixed / draws, cutmix=cut / max(mixed, 1), spread=float(np.mean(blend_spread)))


def test_image_mixing_reaches_the_loader(image_run):
    """Images are mixed by the training loader's collate function (the engine gets no batch mixup): mixup alpha,
    cutmix, the probabilities, the smoothing of the mixed targets and the number of classes are those of the run."""
    r = IMAGE_RECIPE
    call = image_run.calls[0]
    assert call['mixup_fn'] is None
    mix = mixing_collate(call['loader'])
    stats = mixing_statistics(mix, 2000, 10, r['smoothing'])
    assert stats['mixed'] == pytest.approx(r['mixup_prob'], abs=0.05)
    assert stats['cutmix'] == pytest.approx(r['mixup_switch_prob'], abs=0.06)
    assert stats['spread'] == pytest.approx(r['mixup'] / (4 * r['mixup'] + 2), abs=0.015)
    assert (mix.mixup_alpha, mix.cutmix_alpha, mix.mode) == (r['mixup'], r['cutmix'], 'batch')
    assert all(c['mixing'] is True for c in image_run.calls)  # never switched off (mixup_off_epoch null)


def closed_form_loss(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean over the batch of -sum_c target_c log softmax(logits)_c, in float64 with math."""
    total = 0.0
    for row, target in zip(logits.tolist(), targets.tolist()):
        log_z = math.log(sum(math.exp(v) for v in row))
        total += -sum(t * (v - log_z) for t, v in zip(target, row))
    return total / len(logits)


LOGITS = torch.tensor([[2.0, -1.0, 0.5, 0.0, 1.0, -0.5, 0.3, -2.0, 1.5, 0.2],
                       [0.1, 0.4, -0.3, 2.5, -1.0, 0.0, 0.7, 1.1, -0.2, 0.9]])


def test_the_mixed_targets_meet_a_soft_target_loss(image_run):
    """The loss of the loop is the plain cross-entropy against the (smoothed, mixed) soft targets."""
    loss_fn = image_run.calls[0]['loss_fn']
    targets = torch.stack([0.6 * smoothed(2, 10, 0.2) + 0.4 * smoothed(7, 10, 0.2), smoothed(3, 10, 0.2)])
    assert loss_fn(LOGITS, targets).item() == pytest.approx(closed_form_loss(LOGITS, targets), rel=1e-6)


def test_label_smoothing_reaches_the_plain_loss(tmp_path):
    """Without mixing, the loop's loss is cross-entropy against smoothed one-hot targets: (1 - s) on the label and
    s spread over all classes."""
    data = write_cifar10(tmp_path / 'cifar', 16, test=8)
    argv = ['--config', CIFAR10_YML, '--data-dir', str(data), '--output', str(tmp_path / 'run')] + TINY_MODEL + [
        '-T', '1', '--img-size', '16', '--batch-size', '8', '--val-batch-size', '8', '--workers', '0', '--amp',
        'false', '--limit-train-batches', '1', '--epochs', '1', '--warmup-epochs', '0', '--cooldown-epochs', '0',
        '--mixup', '0', '--smoothing', '0.2']
    call = spied_run(argv).calls[0]
    assert call['mixup_fn'] is None and mixing_collate(call['loader']) is None
    labels = torch.tensor([2, 3])
    targets = torch.stack([smoothed(int(y), 10, 0.2) for y in labels])
    assert call['loss_fn'](LOGITS, labels).item() == pytest.approx(closed_form_loss(LOGITS, targets), rel=1e-6)


def test_event_data_mixing_reaches_the_engine(tmp_path):
    """dvs128gesture.yml: the engine mixes the batches with the run's alpha, probability (0.5), smoothing and 11
    classes, and mixing stops at mixup_off_epoch."""
    import utils.data.dvs_data
    argv = ['--output', str(tmp_path / 'run'), '-T', '2', '--batch-size', '4', '--val-batch-size', '4',
            '--workers', '0', '--amp', 'false', '--device', 'cpu', '--epochs', '2', '--warmup-epochs', '1',
            '--cooldown-epochs', '0', '--mixup-off-epoch', '1', '--limit-train-batches', '1', '--smoothing',
            '0.2'] + TINY_MODEL
    spy = spied_run(argv, str(REPO / 'dvs128-gesture' / 'dvs128gesture.yml'),
                    [(utils.data.dvs_data, 'build_dvs_datasets', lambda cfg: (EventFrames(8), EventFrames(4)))])
    assert [c['mixing'] for c in spy.calls] == [True, False]
    mix = spy.calls[0]['mixup_fn']
    mix.mixup_enabled = True
    stats = mixing_statistics(mix, 2000, 11, 0.2)
    assert stats['mixed'] == pytest.approx(0.5, abs=0.05) and stats['cutmix'] == 0
    assert stats['spread'] == pytest.approx(0.5 / 4, abs=0.015)
    assert (mix.mixup_alpha, mix.cutmix_alpha, mix.mode) == (0.5, 0.0, 'batch')
    targets = torch.stack([smoothed(1, 11, 0.2), 0.3 * smoothed(4, 11, 0.2) + 0.7 * smoothed(9, 11, 0.2)])
    logits = torch.cat([LOGITS, torch.tensor([[0.4], [-0.6]])], dim=1)
    assert spy.calls[0]['loss_fn'](logits, targets).item() == pytest.approx(closed_form_loss(logits, targets),
                                                                              rel=1e-6)


# ------------------------------------------------------------------ augmentation
def test_event_augmentation_reaches_the_training_samples_only(synthetic_roots, tmp_path):
    """dvs128gesture.yml (dvs_augment true): every training sample the loop draws is augmented (flip, then one
    operation), the evaluation samples are the cached frames as they are."""
    from utils.data.dvs_data import DVSAugment, load_frames
    argv = ['--data-dir', str(synthetic_roots['dvs128-gesture']), '--output', str(tmp_path / 'run')] + TINY_MODEL + [
        '-T', '2', '--batch-size', '4', '--val-batch-size', '8', '--workers', '0', '--amp', 'false', '--epochs', '1',
        '--warmup-epochs', '0', '--cooldown-epochs', '0', '--limit-train-batches', '1']
    spy = spied_run(argv, str(REPO / 'dvs128-gesture' / 'dvs128gesture.yml'))
    train, evaluation = spy.calls[0]['loader'].dataset, spy.eval_loaders[0].dataset.dataset
    assert isinstance(train.transform, DVSAugment) and evaluation.transform is None
    cached = torch.from_numpy(load_frames(train.base.samples[train.indices[0]][0]))
    draws = [train[0][0] for _ in range(20)]
    assert sum(not torch.equal(x, cached) for x in draws) >= 10 and all(x.shape == cached.shape for x in draws)
    cached = torch.from_numpy(load_frames(evaluation.base.samples[evaluation.indices[0]][0]))
    assert all(torch.equal(evaluation[0][0], cached) for _ in range(5))


def test_random_erasing_reaches_the_loader(image_run):
    """The training loader erases (on the normalised batch) with the run's probability, mode and up to ``recount``
    boxes per image (timm's ``re_count`` is the maximum, the minimum staying 1)."""
    erasing = image_run.calls[0]['loader'].random_erasing
    r = IMAGE_RECIPE
    assert (erasing.probability, erasing.mode, erasing.min_count, erasing.max_count) == \
        (r['reprob'], r['remode'], 1, r['recount'])


def test_randaugment_policy_reaches_the_transform(image_run):
    """cifar10.yml's rand-m9-n1-mstd0.4-inc1: one op per image, magnitude 9 with noise 0.4, the 'increasing'
    variants, each op applied with probability 0.5 and filling with the data set's mean colour; after the crop and
    the flip, before the conversion to a uint8 tensor."""
    transforms = image_run.calls[0]['loader'].dataset.transform.transforms
    names = [type(t).__name__ for t in transforms]
    assert names == ['RandomResizedCropAndInterpolation', 'RandomHorizontalFlip', 'RandAugment', 'MaybePILToTensor']
    assert transforms[1].p == 0.5
    policy = transforms[2]
    assert policy.num_layers == 1 and policy.choice_weights is None
    ops = {op.name: op for op in policy.ops}
    assert {'PosterizeIncreasing', 'SolarizeIncreasing', 'SharpnessIncreasing'} <= set(ops)
    assert not {'Posterize', 'Solarize', 'Sharpness'} & set(ops)
    assert {(op.magnitude, op.magnitude_std, op.prob) for op in ops.values()} == {(9, 0.4, 0.5)}
    assert ops['Rotate'].kwargs['fillcolor'] == tuple(round(255 * m) for m in CIFAR_MEAN)


# ------------------------------------------------------------------ optimizer, schedule, EMA
def test_weight_decay_groups(image_run):
    """AdamW; convolution and linear weights decay with the run's weight decay, their biases and every
    normalisation parameter do not; every parameter is in exactly one group."""
    call = image_run.calls[0]
    optimizer, model = call['optimizer'], call['model']
    assert isinstance(optimizer, torch.optim.AdamW) and {g['eps'] for g in optimizer.param_groups} == {1e-8}
    names = {id(p): name for name, p in model.named_parameters()}
    decay = {}
    for group in optimizer.param_groups:
        for p in group['params']:
            assert names[id(p)] not in decay
            decay[names[id(p)]] = group['weight_decay']
    expected = {}
    for module_name, module in model.named_modules():
        for name, _ in module.named_parameters(recurse=False):
            weight_layer = isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)) and name == 'weight'
            expected[f'{module_name}.{name}'] = IMAGE_RECIPE['weight_decay'] if weight_layer else 0.0
    assert decay == expected
    assert 0 < sum(v > 0 for v in decay.values()) < len(decay)


def published_lr(epoch: int, r: dict) -> float:
    """The published schedule (docs/recipe.md section 4): linear warmup from warmup_lr over the first warmup_epochs,
    inside a cosine from lr to min_lr over ``epochs``, then cooldown_epochs at min_lr."""
    if epoch < r['warmup_epochs']:
        return r['warmup_lr'] + epoch * (r['lr'] - r['warmup_lr']) / r['warmup_epochs']
    if epoch < r['epochs']:
        return r['min_lr'] + 0.5 * (r['lr'] - r['min_lr']) * (1 + math.cos(math.pi * epoch / r['epochs']))
    return r['min_lr']


def test_learning_rate_of_every_epoch(image_run):
    r = IMAGE_RECIPE
    assert [c['epoch'] for c in image_run.calls] == list(range(r['epochs'] + r['cooldown_epochs']))
    for call in image_run.calls:
        expected = published_lr(call['epoch'], r)
        assert call['lrs'] == pytest.approx([expected] * len(call['lrs']), rel=1e-9), call['epoch']
    lrs = [c['lrs'][0] for c in image_run.calls]
    assert lrs[0] == pytest.approx(r['warmup_lr']) and lrs[-2:] == pytest.approx([r['min_lr']] * 2)


def test_ema_decay_reaches_the_update(image_run):
    """After the first optimizer step, each EMA weight is decay * its initial value + (1 - decay) * the model's."""
    decay = IMAGE_RECIPE['model_ema_decay']
    before, after, model = image_run.ema_before, image_run.ema_after, image_run.model_after
    assert set(before) == set(after) == set(model)
    moved = 0.0
    for name in model:
        torch.testing.assert_close(after[name], decay * before[name] + (1 - decay) * model[name], rtol=0,
                                   atol=1e-6, msg=name)
        moved = max(moved, (model[name] - before[name]).abs().max().item())
    assert moved > 1e-5  # the step changed the weights, so another decay would give other EMA weights
    assert image_run.calls[0]['ema'].decay == decay


# ------------------------------------------------------------------ precision and time steps
def test_autocast_dtype_and_time_steps_inside_the_model(image_run):
    """The model trains under autocast in the run's dtype (bfloat16 here, with float16 as CPU autocast's default
    meanwhile, so only an explicitly passed dtype shows), and every neuron sees the run's T time steps."""
    assert image_run.autocast == {(True, torch.bfloat16, torch.bfloat16)}
    assert image_run.calls[0]['amp_dtype'] == torch.bfloat16
    assert image_run.steps == {IMAGE_RECIPE['time_steps']} and image_run.calls[0]['model'].T == 2
