"""float16 autocast with a gradient scaler on CPU: the code path of the faithful CUDA recipe (``amp_dtype: auto`` is
float16 there), which ``--amp-dtype float16`` runs on CPU too (``utils.training.main.amp_setup`` builds the scaler for
the device's type). Training, the scaler's state in the checkpoint and an exact resume after a kill, steps the scaler
skips on inf gradients (no NaN stop, no EMA update), gradient accumulation (one unscale per optimizer step) and two
gloo processes.

Skipped steps are provoked two ways: an inf written into a gradient (engine tests, exact expectations), and
``helpers.EagerScaler`` (the scale doubles after every good step, so it soon overflows float16 gradients for real).
"""
import copy

import pytest
import torch
from timm.optim import create_optimizer_v2
from timm.utils import ModelEmaV3

from helpers import (CIFAR10_YML, TINY, TINY_MODEL, CountingEma, EagerScaler, assert_same_run, read_summary,
                     train_and_kill, two_process_training, write_cifar10)
from utils.config import load_config
from utils.training.engine import train_loss_fn, train_one_epoch
from utils.training.factory import build_model
from utils.training.main import amp_setup, train_main

FP16 = ['--amp', 'true', '--amp-dtype', 'float16']
# a schedule and data pipeline under which 6 epochs of the tiny model visibly learn the CIFAR writer's colour cue
LEARNING = ['--lr', '0.01', '--warmup-epochs', '0', '--cooldown-epochs', '0', '--mixup', '0', '--smoothing', '0',
            '--reprob', '0', '--aa', 'null', '--seed', '3']
CPU = torch.device('cpu')


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp('fp16')
    data = write_cifar10(root / 'cifar')
    base = ['--config', CIFAR10_YML, '--data-dir', str(data)] + TINY + LEARNING
    train_main(base + ['--epochs', '6', '--output', str(root / 'fp32')])
    train_main(base + FP16 + ['--epochs', '6', '--output', str(root / 'fp16')])
    eager = base + FP16 + ['--epochs', '3']
    with pytest.MonkeyPatch.context() as m:
        m.setattr(torch.amp, 'GradScaler', EagerScaler)
        train_main(eager + ['--output', str(root / 'eager')])
    return dict(root=root, eager=eager)


def test_amp_setup_builds_a_scaler_for_the_device():
    dtype, scaler = amp_setup(load_config(FP16), CPU)
    assert dtype == torch.float16 and isinstance(scaler, torch.amp.GradScaler) and scaler.is_enabled()
    assert amp_setup(load_config(['--amp', 'true']), CPU) == (torch.bfloat16, None)  # auto on CPU
    assert amp_setup(load_config(['--amp', 'false'] + FP16[2:]), CPU) == (None, None)


def test_float16_trains_like_float32(runs):
    root = runs['root']
    assert 'amp float16, evaluation in float16' in (root / 'fp16' / 'log.txt').read_text()
    fp16, fp32 = ([float(r['train_loss']) for r in read_summary(root / name)] for name in ('fp16', 'fp32'))
    assert fp16[-1] < 0.75 * fp16[0]  # it learns (about 2.26 -> 1.46)
    # as float32 does: over seeds 1-5 the final losses of these 6-epoch runs differ by up to 0.15 (per-worker
    # augmentation streams) and up to 0.28 (the keyed streams of utils.data.resumable_data): rounding chaos, not a trend
    assert abs(fp16[-1] - fp32[-1]) < 0.3
    scaler = torch.load(root / 'fp16' / 'last.pth.tar', weights_only=True)['amp_scaler']
    # the default scaler never overflowed this tiny model: 6 epochs x 5 batches, every step counted towards growth
    assert scaler['scale'] == 2.0 ** 16 and scaler['_growth_tracker'] == 30
    assert 'amp_scaler' not in torch.load(root / 'fp32' / 'last.pth.tar', weights_only=True)


def test_skipped_steps_are_logged_and_the_run_goes_on(runs):
    out = runs['root'] / 'eager'
    assert [r['epoch'] for r in read_summary(out)] == ['0', '1', '2']  # no NaN stop
    skipped = [line for line in (out / 'log.txt').read_text().splitlines() if 'gradient scaler skipped' in line]
    assert len(skipped) == 3 and all(' of 5 optimizer steps' in line for line in skipped), skipped
    scaler = torch.load(out / 'last.pth.tar', weights_only=True)['amp_scaler']
    assert scaler['growth_interval'] == 1 and scaler['scale'] != 2.0 ** 16


def test_a_killed_float16_run_resumes_exactly(runs, tmp_path, monkeypatch):
    """Killed once epoch 1's checkpoint is in place; the resumed run must continue from the saved loss scale (it
    differs from a fresh scaler's here, so a resume that dropped it would train differently)."""
    monkeypatch.setattr(torch.amp, 'GradScaler', EagerScaler)
    folder = tmp_path / 'run'
    train_and_kill(runs['eager'] + ['--output', str(folder)], 'os.replace', 'last.pth.tar', 2, 'after')
    last = torch.load(folder / 'last.pth.tar', weights_only=True)
    assert last['epoch'] == 1 and last['amp_scaler']['scale'] != 2.0 ** 16
    train_main(runs['eager'] + ['--resume', str(folder / 'last.pth.tar')])
    assert_same_run(folder, runs['root'] / 'eager')


# ---- the engine, step by step -------------------------------------------------------------------------------------

B = 4
# Low enough that these random batches never overflow float16 gradients (2^16 does, in the first step): the
# provoked inf gradients are then the only ones.
INIT_SCALE = 2.0 ** 10


@pytest.fixture(scope='module')
def setup():
    torch.manual_seed(0)
    model = build_model(load_config(TINY_MODEL + ['-T', '1', '--img-size', '16', '--num-classes', '10']))
    images, targets = torch.randn(5 * B, 3, 16, 16), torch.randint(0, 10, (5 * B,))
    return model, [(images[i:i + B], targets[i:i + B]) for i in range(0, 5 * B, B)]


def inf_gradients_on(model, backward_passes):
    """Make the first parameter's gradient inf in the given backward passes (0-based), whatever the loss."""
    calls = []

    def hook(grad):
        calls.append(1)
        return torch.full_like(grad, float('inf')) if len(calls) - 1 in backward_passes else grad
    next(model.parameters()).register_hook(hook)


def train_fp16(model, loader, *, steps=1, inf_in=(), ema=None, scaler=None):
    model = copy.deepcopy(model)
    inf_gradients_on(model, inf_in)
    optimizer = create_optimizer_v2(model, opt='adamw', lr=1e-3, weight_decay=0.05)
    scaler = scaler or torch.amp.GradScaler('cpu', init_scale=INIT_SCALE)
    ema = ema(model) if callable(ema) else ema
    result = train_one_epoch(model, loader, optimizer, train_loss_fn(None, 0.1), CPU, 0, amp_dtype=torch.float16,
                             scaler=scaler, ema=ema, grad_accum_steps=steps, log=lambda line: None)
    return model, optimizer, scaler, ema, result


def test_inf_gradients_skip_the_step_and_the_ema_not_the_run(setup):
    model, loader = setup
    # batch 2 of 3 has inf gradients: its step is skipped, no NonFiniteLossError (the loss is finite)
    skipped = train_fp16(model, loader[:3], inf_in={2}, ema=lambda m: ModelEmaV3(m, decay=0.9))
    two = train_fp16(model, loader[:2], ema=lambda m: ModelEmaV3(m, decay=0.9))
    (m_skip, opt_skip, scaler_skip, ema_skip, r_skip), (m_two, _, scaler_two, ema_two, r_two) = skipped, two
    assert (r_skip['steps'], r_skip['skipped_steps'], r_two['skipped_steps']) == (3, 1, 0)
    assert scaler_skip.get_scale() == scaler_two.get_scale() / 2  # backed off once
    assert all(state['step'] == 2 for state in opt_skip.state.values())
    for a, b in zip(m_skip.parameters(), m_two.parameters()):  # (BatchNorm's statistics did see the batch)
        assert torch.equal(a, b)  # the skipped step left the weights as they were...
    for a, b in zip(ema_skip.module.state_dict().values(), ema_two.module.state_dict().values()):
        assert torch.equal(a, b)  # ...and the EMA too (timm's loop would have pulled it once more)
    # training goes on after the skipped step: all 5 batches, one skipped, the weights move on
    _, opt_five, _, ema, result = train_fp16(model, loader, inf_in={2}, ema=CountingEma())
    assert (result['steps'], result['skipped_steps'], ema.updates) == (5, 1, 4)
    assert all(state['step'] == 4 for state in opt_five.state.values())


class CountingScaler(torch.amp.GradScaler):
    def __init__(self):
        super().__init__('cpu', init_scale=INIT_SCALE)
        self.calls = dict(unscale_=0, step=0, update=0)

    def unscale_(self, optimizer):
        self.calls['unscale_'] += 1
        return super().unscale_(optimizer)

    def step(self, optimizer, *args, **kwargs):
        self.calls['step'] += 1
        return super().step(optimizer, *args, **kwargs)

    def update(self, new_scale=None):
        self.calls['update'] += 1
        return super().update(new_scale)


@pytest.mark.parametrize('inf_in,skipped', [((), 0), ({1}, 1)])
def test_accumulation_unscales_once_per_optimizer_step(setup, inf_in, skipped):
    """5 batches with N = 3: two groups (3 and 2 batches), so two unscales, steps and updates of the scaler. An inf
    gradient in batch 1 skips its whole group (the first), and only that one."""
    model, loader = setup
    scaler, ema = CountingScaler(), CountingEma()
    _, optimizer, _, _, result = train_fp16(model, loader, steps=3, inf_in=inf_in, scaler=scaler, ema=ema)
    assert scaler.calls == dict(unscale_=2, step=2, update=2)
    assert (result['steps'], result['skipped_steps'], ema.updates) == (2, skipped, 2 - skipped)
    assert all(state['step'] == 2 - skipped for state in optimizer.state.values())


# ---- two processes ------------------------------------------------------------------------------------------------

def test_two_gloo_processes_under_float16_keep_identical_weights(tmp_path):
    """DDP all-reduces the scaled gradients before the scaler unscales them, so both ranks find the same inf
    gradients and skip the same steps (EagerScaler makes them skip some); their weights stay identical."""
    data = write_cifar10(tmp_path / 'cifar', 16, test=40)
    out = tmp_path / 'run'
    run = two_process_training(tmp_path, ['--data-dir', str(data), '--output', str(out), '--epochs', '2',
                                          '--device', 'cpu'] + TINY + FP16 + LEARNING + ['--batch-size', '8'])
    assert '2 process(es)' in run['stdout'] and 'amp float16' in run['stdout']
    skipped = [[epoch['skipped_steps'] for epoch in rank] for rank in run['epochs']]
    assert skipped[0] == skipped[1] and sum(skipped[0]) > 0, skipped
    saved = torch.load(out / 'last.pth.tar', weights_only=True)['state_dict']
    for key, value in run['weights'][0].items():
        assert torch.equal(value, run['weights'][1][key]), key
        assert torch.equal(value, saved[key]), key
