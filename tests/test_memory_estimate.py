"""The memory-aware start (utils.training.memory_estimate): a run whose estimated step memory exceeds the free memory is
refused before anything is written, naming the options; an allocation failure during training is one screen with
numbers."""
import pytest
import torch

import utils.training.main
import utils.training.memory_estimate as memory
from helpers import CIFAR10_YML, TINY, refused, write_cifar10
from utils.config import load_config
from utils.training.main import train_main

VARIANT = 'spikingformer_cifar_4_384'


def _cfg(*argv):
    return load_config(['--config', CIFAR10_YML, '--model', VARIANT, *argv])


def test_every_published_variant_has_a_measured_line():
    from models import VARIANTS
    assert set(memory.MEASURED) == set(VARIANTS)
    for name, (T, side, a, b, a_ckpt, b_ckpt) in memory.MEASURED.items():
        assert b > 0 and b_ckpt > 0 and b_ckpt < b, name  # checkpointing keeps less per image


def test_the_estimate_follows_batch_time_steps_and_checkpointing():
    base = memory.estimate_step_mib(_cfg('--batch-size', '8', '--no-amp'))
    T0, side, a, b, a_ckpt, b_ckpt = memory.MEASURED[VARIANT]
    assert memory.estimate_step_mib(_cfg('--batch-size', '9', '--no-amp')) - base == pytest.approx(b)
    assert memory.estimate_step_mib(_cfg('--batch-size', '8', '--no-amp', '-T', str(2 * T0))) - base == \
        pytest.approx(8 * b)
    assert memory.estimate_step_mib(_cfg('--batch-size', '8', '--no-amp', '--grad-checkpointing')) < base
    assert memory.estimate_step_mib(_cfg('--embed-dims', '32')) is None  # not a published architecture: no guess


def test_the_estimate_holds_the_weights_the_optimizer_state_and_the_ema():
    """Between steps a run holds the weights, AdamW's two tensors per weight (SGD's one) and, with an EMA, one more."""
    weights = memory.weights_mib(VARIANT)
    T0, side, a, b, a_ckpt, b_ckpt = memory.MEASURED[VARIANT]
    adamw = memory.estimate_step_mib(_cfg('--batch-size', '8', '--no-amp', '--opt', 'adamw'))
    assert adamw == pytest.approx(a + 8 * b + 3 * weights)
    assert memory.estimate_step_mib(_cfg('--batch-size', '8', '--no-amp', '--opt', 'sgd')) == pytest.approx(
        adamw - weights)
    assert memory.estimate_step_mib(_cfg('--batch-size', '8', '--no-amp', '--model-ema')) == pytest.approx(
        adamw + weights)


def test_cpu_free_memory_is_read():
    assert 0 < memory.free_memory_mib(torch.device('cpu')) < 2 ** 30
    assert memory.free_memory_mib(torch.device('cpu'), 4) == pytest.approx(
        memory.free_memory_mib(torch.device('cpu')) / 4, rel=0.05)


def test_a_step_that_cannot_fit_is_refused_before_the_run_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(memory, 'free_memory_mib', lambda device, processes=1: 100.0)
    out = tmp_path / 'run'
    err = refused(capsys, train_main, ['--config', CIFAR10_YML, '--model', VARIANT, '--data-dir', str(tmp_path),
                                       '--output', str(out), '--batch-size', '64'],
                  'GiB', '0.1 GiB', '--grad-checkpointing', '--grad-accum-steps 2', '--batch-size 32', '-T',
                  '--no-memory-check')
    assert not out.exists(), err
    # already on: checkpointing is not offered again
    err = refused(capsys, train_main, ['--config', CIFAR10_YML, '--model', VARIANT, '--data-dir', str(tmp_path),
                                       '--output', str(out), '--grad-checkpointing'], '--grad-accum-steps')
    assert '--grad-checkpointing (' not in err


def test_an_allocation_failure_during_training_is_one_screen(tmp_path, capsys, monkeypatch):
    data = write_cifar10(tmp_path / 'data')

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't allocate memory: you "
                           "tried to allocate 123456789 bytes.")
    monkeypatch.setattr(utils.training.main, 'train_one_epoch', out_of_memory)
    refused(capsys, train_main, ['--config', CIFAR10_YML, *TINY, '--data-dir', str(data), '--epochs', '1',
                                 '--warmup-epochs', '0',
                                 '--output', str(tmp_path / 'run')],
            'out of memory on cpu', 'batch 16', "can't allocate memory", '--grad-checkpointing', '--grad-accum-steps')


def test_other_runtime_errors_are_not_called_out_of_memory():
    with pytest.raises(RuntimeError, match='shape mismatch'):
        with memory.out_of_memory_reported(_cfg(), torch.device('cpu')):
            raise RuntimeError('shape mismatch')
