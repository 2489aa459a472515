"""Options that touch the same state, in pairs, tested as the single options are: through ``train_main`` where the
pair meets in the run, through ``train_one_epoch`` where it meets in the loop.

- ``--initial-checkpoint`` with ``--use-ema``: fine-tuning starts from the checkpoint's EMA weights.
- Accumulation with EMA, and accumulation with ``--limit-train-batches``: the EMA steps once per optimizer step, and
  the limited epoch's last, partial group is divided by its own size.
- Elsewhere: fp16 with resume (tests/test_fp16.py, ``test_a_killed_float16_run_resumes_exactly``); ``--model-ema``
  with several processes (tests/test_rank_randomness.py, ``test_the_ema_of_several_processes_is_the_same_and_saved``).
"""
import copy

import pytest
import torch
from timm.optim import create_optimizer_v2
from timm.utils import ModelEmaV3

from helpers import CIFAR10_YML, SCHEDULE, TINY, CountingEma, write_cifar10
from test_grad_accum import B, batches, setup  # noqa: F401 (setup: the module fixture, shared)
from utils.config import load_config
from utils.training import main as main_module
from utils.training.engine import train_loss_fn, train_one_epoch
from utils.training.factory import build_model
from utils.training.main import train_main


class StopBeforeTraining(Exception):
    """Raised by the spy once it has the weights the run starts from."""


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return write_cifar10(tmp_path_factory.mktemp('pairs') / 'cifar', 16, test=8)


def starting_weights(monkeypatch, argv) -> dict:
    """The weights ``train_main(argv)`` trains its first epoch from."""
    seen = {}

    def spy(model, *args, **kwargs):
        seen.update(copy.deepcopy(model.state_dict()))
        raise StopBeforeTraining

    monkeypatch.setattr(main_module, 'train_one_epoch', spy)
    with pytest.raises(StopBeforeTraining):
        train_main(argv)
    return seen


def test_fine_tuning_with_use_ema_starts_from_the_ema_weights(data, tmp_path, monkeypatch):
    base = ['--config', CIFAR10_YML, '--data-dir', str(data)] + TINY
    model = build_model(load_config(base))
    weights = model.state_dict()
    ema = {k: v + 0.25 if v.is_floating_point() else v for k, v in weights.items()}  # another set of weights
    checkpoint = tmp_path / 'pretrained.pth.tar'
    torch.save({'state_dict': weights, 'state_dict_ema': ema, 'epoch': 9}, checkpoint)
    for use_ema, expected in ((True, ema), (False, weights)):
        start = starting_weights(monkeypatch, base + ['--initial-checkpoint', str(checkpoint), '--output',
                                                      str(tmp_path / f'run_{use_ema}'), '--use-ema', str(use_ema)])
        for key, value in expected.items():
            assert torch.equal(start[key], value), (use_ema, key)


def test_accumulation_steps_the_ema_once_per_optimizer_step_in_a_run(data, tmp_path, monkeypatch):
    """--grad-accum-steps 2 --limit-train-batches 3 --model-ema: groups of 2 and 1 batches, so 2 optimizer steps and
    2 EMA updates per epoch."""
    updates, results = [], []

    class CountingModelEma(ModelEmaV3):
        def update(self, model, step=None):
            updates.append(1)
            return super().update(model, step)

    def spy(*args, **kwargs):
        results.append(train_one_epoch(*args, **kwargs))
        return results[-1]

    monkeypatch.setattr(main_module, 'ModelEmaV3', CountingModelEma)
    monkeypatch.setattr(main_module, 'train_one_epoch', spy)
    train_main(['--config', CIFAR10_YML, '--data-dir', str(data), '--output', str(tmp_path / 'run'), '--epochs', '1',
                '--grad-accum-steps', '2', '--limit-train-batches', '3', '--model-ema'] + TINY + SCHEDULE)
    assert [r['steps'] for r in results] == [2] and len(updates) == 2
    assert results[0]['samples'] == 3 * 16


def sgd_epoch(model, loader, **kwargs):
    model = copy.deepcopy(model)
    optimizer = create_optimizer_v2(model, opt='sgd', lr=0.05, weight_decay=0.05)
    result = train_one_epoch(model, loader, optimizer, train_loss_fn(None, 0.1), torch.device('cpu'), 0,
                             log=lambda line: None, **kwargs)
    return model, result


def test_a_limited_epoch_groups_its_own_batches(setup):
    """5 batches limited to 3, N = 2: a group of 2, then a partial group of 1 (its loss divided by 1), so the same two
    steps as one batch of 2B then one of B; the EMA steps twice."""
    model, images, targets = setup
    ema = CountingEma()
    limited, result = sgd_epoch(model, batches(images, targets, [B] * 5), grad_accum_steps=2, limit_batches=3,
                                ema=ema)
    reference, _ = sgd_epoch(model, batches(images, targets, [2 * B, B]))  # the same two steps, unaccumulated
    assert result['steps'] == 2 and ema.updates == 2 and result['samples'] == 3 * B
    largest = 0.0
    for (name, a), b in zip(limited.named_parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
    for a, c in zip(limited.parameters(), model.parameters()):
        largest = max(largest, (a - c).abs().max().item())
    assert largest > 1e-4  # the epoch moved the weights: the comparison can fail
