"""Gradient accumulation in the engine: N batches of B make the same optimizer step as one batch of N*B.

The comparison needs BatchNorm's batch statistics out of the way (they are computed per forward pass, so they
differ between a batch of B and one of N*B by design): the model is wrapped so that its BatchNorm layers stay in
eval mode (running statistics) while it trains. The two-process case (DDP, no_sync) runs in test_slurm.py.
"""
import copy

import pytest
import torch
from timm.optim import create_optimizer_v2
from torch import nn

from helpers import CIFAR10_YML, TINY_MODEL, CountingEma, refused
from utils.config import load_config
from utils.errors import NonFiniteLossError
from utils.training.engine import accumulation_group_size, train_loss_fn, train_one_epoch
from utils.training.factory import build_model
from utils.training.main import train_main

MODEL_ARGS = TINY_MODEL + ['-T', '1', '--img-size', '16', '--num-classes', '10']
B = 4


class FrozenBatchNormStatistics(nn.Module):
    """The wrapped model trains, but its BatchNorm layers normalise with (and keep) their running statistics."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    def forward(self, x):
        return self.model(x)


@pytest.fixture(scope='module')
def setup():
    torch.manual_seed(0)
    model = FrozenBatchNormStatistics(build_model(load_config(MODEL_ARGS)))
    images, targets = torch.randn(5 * B, 3, 16, 16), torch.randint(0, 10, (5 * B,))
    return model, images, targets


def batches(images, targets, sizes):
    out, start = [], 0
    for size in sizes:
        out.append((images[start:start + size], targets[start:start + size]))
        start += size
    return out


def train(model, loader, steps=1, opt='sgd', scaler=None, ema=None):
    model = copy.deepcopy(model)
    optimizer = create_optimizer_v2(model, opt=opt, lr=0.05 if opt == 'sgd' else 1e-3, weight_decay=0.05)
    result = train_one_epoch(model, loader, optimizer, train_loss_fn(None, 0.1), torch.device('cpu'), 0,
                             grad_accum_steps=steps, scaler=scaler, ema=ema, log=lambda line: None)
    return model, optimizer, result


def test_group_sizes_follow_timm():
    assert [accumulation_group_size(i, 5, 2) for i in range(5)] == [2, 2, 2, 2, 1]
    assert [accumulation_group_size(i, 5, 3) for i in range(5)] == [3, 3, 3, 2, 2]
    assert [accumulation_group_size(i, 6, 3) for i in range(6)] == [3] * 6
    assert [accumulation_group_size(i, 4, 1) for i in range(4)] == [1] * 4


@pytest.mark.parametrize('opt,with_scaler', [('sgd', False), ('sgd', True), ('adamw', False)])
def test_n_batches_of_b_step_as_one_batch_of_n_b(setup, opt, with_scaler):
    model, images, targets = setup
    scaler = (lambda: torch.amp.GradScaler('cpu', init_scale=1024.0)) if with_scaler else (lambda: None)
    ema = CountingEma()
    # 5 batches of B with N = 3: a group of 3, then a last, partial group of 2 (its losses divided by 2)
    accumulated, opt_a, result = train(model, batches(images, targets, [B] * 5), 3, opt, scaler(), ema)
    reference, _, reference_result = train(model, batches(images, targets, [3 * B, 2 * B]), 1, opt, scaler())
    plain, _, _ = train(model, batches(images, targets, [B] * 5), 1, opt, scaler())
    assert ema.updates == 2
    if opt == 'adamw':
        assert all(state['step'] == 2 for state in opt_a.state.values())
    assert result['samples'] == reference_result['samples'] == 5 * B
    assert result['loss'] == pytest.approx(reference_result['loss'], rel=1e-6)
    largest = 0.0
    for (name, a), b, c in zip(accumulated.named_parameters(), reference.parameters(), plain.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
        largest = max(largest, (a - c).abs().max().item())
    assert largest > 1e-4  # one step per batch of B is a different training: the comparison can fail


class NanOnSecondCall:
    """The training loss, NaN for the second batch (NaN images would not do: the spiking neurons gate them)."""

    def __init__(self):
        self.calls, self.loss = 0, train_loss_fn(None, 0.1)

    def __call__(self, output, target):
        self.calls += 1
        loss = self.loss(output, target)
        return loss * float('nan') if self.calls == 2 else loss


def test_non_finite_loss_stops_before_the_group_steps(setup):
    model, images, targets = setup
    loader = batches(images, targets, [B] * 5)
    for steps, stepped in ((2, False), (1, True)):
        trained = copy.deepcopy(model)
        optimizer = create_optimizer_v2(trained, opt='adamw', lr=1e-3)
        with pytest.raises(NonFiniteLossError):
            train_one_epoch(trained, loader, optimizer, NanOnSecondCall(), torch.device('cpu'), 0,
                            grad_accum_steps=steps)
        same = all(torch.equal(a, b) for a, b in zip(trained.parameters(), model.parameters()))
        assert same != stepped  # N = 2: no step was made; N = 1: the first batch had stepped


def test_fewer_than_one_step_is_refused(tmp_path, capsys):
    refused(capsys, train_main, ['--config', CIFAR10_YML, '--grad-accum-steps', '0', '--output', str(tmp_path / 'r')],
            '--grad-accum-steps')
    assert not (tmp_path / 'r').exists()
