"""--grad-checkpointing changes memory and time only: the same loss, logits, gradients and BatchNorm running statistics
as without, on the three published layouts, both CPU neuron paths, under bf16/fp16 autocast, with gradient
accumulation and under DDP (models.activation_checkpoint)."""
import copy
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from conftest import load_reference, reference_model
from helpers import free_port
from models.activation_checkpoint import checkpoint_sequence
from utils.config import load_config
from utils.training.factory import build_model

REL = 1e-6


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def _bn_buffers(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items() if 'running' in k or 'num_batches' in k}


def _steps(model: nn.Module, inputs, target, amp_dtype=None) -> tuple:
    """Forward and backward of each micro-batch of ``inputs`` (gradients accumulate); returns (logits, losses)."""
    model.train()
    logits, losses, seen = [], [], 0
    for x in inputs:
        with torch.autocast('cpu', dtype=amp_dtype, enabled=amp_dtype is not None):
            out = model(x)
        loss = nn.functional.cross_entropy(out.float(), target[seen:seen + len(x)])
        seen += len(x)
        loss.backward()
        logits.append(out.detach())
        losses.append(loss.detach())
    return logits, losses


def assert_same_step(plain: nn.Module, checkpointed: nn.Module, inputs, target, amp_dtype=None) -> None:
    logits, losses = _steps(plain, inputs, target, amp_dtype)
    logits_c, losses_c = _steps(checkpointed, inputs, target, amp_dtype)
    for a, b in zip(logits_c + losses_c, logits + losses):
        assert _rel(a, b) <= REL
    grads = dict(plain.named_parameters())
    for name, p in checkpointed.named_parameters():
        assert _rel(p.grad, grads[name].grad) <= REL, name
    buffers, buffers_c = _bn_buffers(plain), _bn_buffers(checkpointed)
    assert buffers.keys() == buffers_c.keys() and buffers
    for name, value in buffers.items():  # updated once per forward, not again by the recomputation
        assert torch.equal(buffers_c[name], value), name


def _pair(record, backend):
    plain = reference_model(record, backend)
    checkpointed = copy.deepcopy(plain)
    checkpointed.set_grad_checkpointing(True)
    assert checkpointed.grad_checkpointing and checkpointed.grad_checkpointing_tokenizer
    return plain, checkpointed


@pytest.mark.parametrize('backend', ['fused', 'torch'])
def test_checkpointed_step_equals_plain_step(layout_reference, backend):
    """Float32, each published layout, both CPU neuron paths, two accumulated micro-batches (the second sees the
    BatchNorm statistics the first updated)."""
    plain, checkpointed = _pair(layout_reference, backend)
    x, target = layout_reference['input'], layout_reference['target']
    half = (len(x) + 1) // 2
    assert_same_step(plain, checkpointed, [x[:half], x[half:]], target)


@pytest.mark.parametrize('amp_dtype', [torch.bfloat16, torch.float16])
def test_checkpointed_step_equals_plain_step_under_autocast(amp_dtype):
    """The recomputation runs under the autocast of the forward (torch.utils.checkpoint restores it)."""
    record = load_reference('imagenet_style')
    plain, checkpointed = _pair(record, 'fused')
    assert_same_step(plain, checkpointed, [record['input']], record['target'], amp_dtype)


def test_evaluation_and_no_grad_are_plain_runs():
    record = load_reference('cifar_style')
    plain, checkpointed = _pair(record, 'fused')
    with torch.no_grad():
        assert torch.equal(checkpointed.eval()(record['input']), plain.eval()(record['input']))
    assert _bn_buffers(checkpointed).keys() == _bn_buffers(plain).keys()
    checkpointed.set_grad_checkpointing(False)
    assert not checkpointed.grad_checkpointing and not checkpointed.grad_checkpointing_tokenizer


def test_checkpoint_sequence_saves_only_block_inputs():
    """The point of it: fewer tensors kept for backward (each block keeps only its input)."""
    blocks = nn.Sequential(*[nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU()) for _ in range(4)])
    x = torch.randn(4, 8, requires_grad=True)

    def saved(fn):
        count = [0]

        def pack(t):
            count[0] += 1
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(x).sum().backward()
        return count[0]
    assert saved(lambda inp: checkpoint_sequence(blocks, inp)) < saved(blocks) / 2


def test_config_flag_switches_the_model():
    cfg = load_config(['--model', 'spikingformer_cifar_4_256', '--embed-dims', '32', '--depths', '1',
                       '--num-heads', '2', '--grad-checkpointing'])
    assert build_model(cfg, training=True).grad_checkpointing
    assert not build_model(cfg).grad_checkpointing  # evaluation: nothing to recompute
    assert not build_model(load_config(['--model', 'spikingformer_cifar_4_256', '--embed-dims', '32', '--depths', '1',
                                        '--num-heads', '2']), training=True).grad_checkpointing


def _ddp_rank(rank: int, port: int, results) -> None:
    """One of two gloo processes: the same two accumulated micro-batches (no_sync on the first, as the engine does)
    through a plain and a checkpointed DDP model; rank 0 reports the differences."""
    from torch.nn.parallel import DistributedDataParallel
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank, world_size=2)
    try:
        record = load_reference('cifar_style')
        plain, checkpointed = _pair(record, 'fused')
        x = record['input'][3 * rank:3 * rank + 3]
        target = record['target'][3 * rank:3 * rank + 3]
        grads, buffers = [], []
        for model in (plain, checkpointed):
            ddp = DistributedDataParallel(model.train())
            with ddp.no_sync():
                nn.functional.cross_entropy(ddp(x[:2]), target[:2]).backward()
            nn.functional.cross_entropy(ddp(x[2:]), target[2:]).backward()
            grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
            buffers.append(_bn_buffers(model))
        if rank == 0:
            results.put(dict(grad=max(_rel(grads[1][n], g) for n, g in grads[0].items()),
                             buffers=all(torch.equal(buffers[1][n], b) for n, b in buffers[0].items())))
    finally:
        dist.destroy_process_group()


def test_checkpointed_ddp_with_accumulation_equals_plain():
    ctx = mp.get_context('fork')
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_ddp_rank, args=(rank, port, results)) for rank in range(2)]
    for p in procs:
        p.start()
    result = results.get(timeout=120)
    for p in procs:
        p.join(timeout=60)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    assert result['grad'] <= REL and result['buffers'], result


def test_a_training_run_with_the_flag_equals_one_without(tmp_path, monkeypatch):
    """Through train.py's path (config key, factory, engine) with gradient accumulation: the same summary.csv and
    weights, BatchNorm statistics included."""
    from helpers import CIFAR10_YML, SCHEDULE, TINY, read_summary, write_cifar10
    from utils.training.main import train_main
    data = write_cifar10(tmp_path / 'data')
    argv = ['--config', CIFAR10_YML, *TINY, *SCHEDULE, '--data-dir', str(data), '--epochs', '1',
            '--grad-accum-steps', '2']
    train_main(argv + ['--output', str(tmp_path / 'plain')])
    import models.activation_checkpoint as activation_checkpoint
    checkpoint, calls = activation_checkpoint.checkpoint, []
    monkeypatch.setattr(activation_checkpoint, 'checkpoint', lambda *a, **k: calls.append(1) or checkpoint(*a, **k))
    train_main(argv + ['--output', str(tmp_path / 'ckpt'), '--grad-checkpointing'])
    assert calls  # the flag reached the model
    assert read_summary(tmp_path / 'ckpt') == read_summary(tmp_path / 'plain')
    plain, ckpt = (torch.load(tmp_path / name / 'last.pth.tar', weights_only=True)['state_dict']
                   for name in ('plain', 'ckpt'))
    for name, value in plain.items():
        assert _rel(ckpt[name], value) <= REL if value.is_floating_point() else torch.equal(ckpt[name], value), name


def test_which_segments_are_recomputed(monkeypatch):
    """What is recomputed and what keeps its activations (docs/speed.md): with the fused neuron path, the fire part
    (LIF, pool) of every stage but the last by models.fire_recompute (the stem with the first), the conv-BatchNorm of
    the middle stages and every block but the last by torch.utils.checkpoint; with the torch path, plain segments."""
    import models.activation_checkpoint as activation_checkpoint
    import models.layers as layers
    from models import fire_recompute
    record = load_reference('imagenet_style')
    for backend in ('fused', 'torch'):
        model = reference_model(record, backend)
        model.set_grad_checkpointing(True)
        recomputed, fires = [], []
        names = {id(m): n for n, m in model.named_modules()}

        def spy(real):
            def checkpoint_module(module, x, function=None):
                recomputed.append(names[id(module)] + ('' if function is None else '.' + function.__name__))
                return real(module, x, function)
            return checkpoint_module
        monkeypatch.setattr(activation_checkpoint, 'checkpoint_module', spy(activation_checkpoint.checkpoint_module))
        monkeypatch.setattr(layers, 'checkpoint_module', spy(layers.checkpoint_module))
        real_fire = fire_recompute.fire
        monkeypatch.setattr(fire_recompute, 'fire', lambda stage, x, stem=None: fires.append(
            names[id(stage)] + ('+stem' if stem is not None else '')) or real_fire(stage, x, stem))
        model.train()(record['input']).sum().backward()
        monkeypatch.undo()
        if backend == 'fused':
            assert recomputed == ['patch_embed.stages.1.project', 'patch_embed.stages.2.project', 'block.0']
            assert fires == ['patch_embed.stages.0+stem', 'patch_embed.stages.1', 'patch_embed.stages.2']
        else:
            assert recomputed == ['patch_embed.forward_stem', 'patch_embed.stages.0', 'patch_embed.stages.1',
                                  'patch_embed.stages.2', 'block.0']
            assert fires == []
