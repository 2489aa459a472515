"""models.fire_recompute: the stages it recomputes give the plain model's numbers bit for bit (logits, every
gradient, the input's gradient, BatchNorm statistics), it keeps only each stage's input for backward and it runs
exactly where the neuron runs the fused path; the overwriting LIF backward and the in-place potentials it rests on
equal the plain ones bit for bit."""
import copy

import pytest
import torch
from torch import nn

from conftest import load_reference, reference_model
from models import fire_recompute
from models.fused_lif import lif_backward, lif_forward


def _step(model: nn.Module, x: torch.Tensor, target: torch.Tensor, amp_dtype=None) -> torch.Tensor:
    model.train()
    with torch.autocast('cpu', dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        out = model(x)
    nn.functional.cross_entropy(out.float(), target).backward()
    return out.detach()


def _fires_taken(monkeypatch) -> list:
    """Records, per call of models.fire_recompute.fire, whether it ran the stem too."""
    calls = []
    real = fire_recompute.fire

    def spy(stage, x, stem=None):
        calls.append(stem is not None)
        return real(stage, x, stem)
    monkeypatch.setattr(fire_recompute, 'fire', spy)
    return calls


def assert_bitwise_same_step(record: dict, amp_dtype=None, input_grad: bool = False, frozen_stem: bool = False):
    plain = reference_model(record, 'fused')
    if frozen_stem:
        for p in plain.patch_embed.stem_conv.parameters():
            p.requires_grad_(False)
    checkpointed = copy.deepcopy(plain)
    checkpointed.set_grad_checkpointing(True)
    x, target = record['input'], record['target']
    grads = []
    for model in (plain, checkpointed):
        for part in (slice(0, 1), slice(1, None)):  # the second micro-batch sees the statistics the first updated
            inp = x[part].clone().requires_grad_(input_grad)
            logits = _step(model, inp, target[part], amp_dtype)
        grads.append((logits, inp.grad))
    (logits, x_grad), (logits_c, x_grad_c) = grads
    assert torch.equal(logits_c, logits)
    if input_grad:
        assert x_grad is not None and torch.equal(x_grad_c, x_grad)
    reference = dict(plain.named_parameters())
    for name, p in checkpointed.named_parameters():
        if p.requires_grad:
            assert torch.equal(p.grad, reference[name].grad), name
        else:
            assert p.grad is None and reference[name].grad is None, name
    buffers = plain.state_dict()
    for name, value in checkpointed.state_dict().items():
        assert torch.equal(value, buffers[name]), name


@pytest.mark.parametrize('amp_dtype', [None, torch.bfloat16, torch.float16], ids=['fp32', 'bf16', 'fp16'])
def test_front_gives_the_plain_numbers_bit_for_bit(layout_reference, amp_dtype, monkeypatch):
    """Every published layout (ImageNet and DVS pool in the first stage, CIFAR does not), float32 and both autocast
    dtypes, two micro-batches; and models.fire_recompute is really what ran."""
    calls = _fires_taken(monkeypatch)
    assert_bitwise_same_step(layout_reference, amp_dtype)
    # per micro-batch of the checkpointed model (none for the plain one): the stem with the first stage, stages 2, 3
    assert calls == [True, False, False] * 2


def test_gradient_with_respect_to_the_input_and_a_frozen_stem():
    """What an attack or a saliency map needs (the input's gradient), and a stem left out of training."""
    record = load_reference('imagenet_style')
    assert_bitwise_same_step(record, input_grad=True)
    assert_bitwise_same_step(record, frozen_stem=True)


def test_front_keeps_only_its_input_for_backward():
    """The point of it: nothing at full resolution is saved by the forward; the backward recomputes it. The same for
    a later stage: only its input is kept."""
    record = load_reference('imagenet_style')
    model = reference_model(record, 'fused').train()
    x = model.to_time_major(record['input'])
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = fire_recompute.fire(model.patch_embed.stages[0], x, stem=model.patch_embed)
        later = fire_recompute.fire(model.patch_embed.stages[1], out)
    assert out.requires_grad and later.requires_grad and len(saved) == 2 and saved[0] is x and saved[1] is out
    plain = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: plain.append(t) or t, lambda t: t):
        model.patch_embed.stages[0].fire(model.patch_embed.forward_stem(x))
    assert sum(t.numel() for t in plain) > 5 * x.numel()  # what the plain front would have kept (7.5x here)


@pytest.mark.parametrize('backend, taken', [('fused', True), ('auto', True), ('torch', False)])
def test_taken_for_the_fused_neuron_path_only(backend, taken, monkeypatch):
    """The torch backend's backward is SpikingJelly's autograd graph, not the fused backward the front calls: there
    the stages stay plain checkpointed segments (tests/test_grad_checkpointing.py checks its numbers)."""
    record = load_reference('imagenet_style')
    model = reference_model(record, backend)
    model.set_grad_checkpointing(True)
    calls = _fires_taken(monkeypatch)
    _step(model, record['input'], record['target'])
    assert bool(calls) is taken
    assert fire_recompute.supported(model.patch_embed.stages[0].lif, record['input']) is taken


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize('tau, alpha', [(2.0, 4.0), (1.5, 4.0), (1.5, 3.0)])
def test_overwriting_lif_backward_and_in_place_potentials_are_bitwise_the_plain_ones(dtype, tau, alpha):
    torch.manual_seed(0)
    x = (torch.randn(4, 3000) * 2).to(dtype)
    h = torch.empty_like(x)
    spikes = lif_forward(x, tau, 1.0, h)
    own = x.clone()
    assert torch.equal(lif_forward(own, tau, 1.0, own), spikes) and torch.equal(own, h)
    g = torch.randn(4, 3000).to(dtype)
    expected = lif_backward(g, h, tau, 1.0, alpha)
    g_own, h_own = g.clone(), h.clone()
    got = lif_backward(g_own, h_own, tau, 1.0, alpha, overwrite=True)
    assert got.dtype == expected.dtype and torch.equal(got, expected)
    if dtype in (torch.float32, torch.float64):  # written into the caller's gradient, no new [T, N] buffer
        assert got.data_ptr() == g_own.data_ptr()


@pytest.mark.parametrize('name', sorted(__import__('models').VARIANTS) + sorted(__import__('models').SPIKFORMER_VARIANTS))
def test_every_registered_variant_checkpoints_bit_for_bit(name):
    """Each registered Spikingformer and Spikformer variant (its layout, tau and the Spikformer options; the width,
    depth and image size cut down to run in a second): one checkpointed step equals the plain one bit for bit."""
    import timm
    torch.manual_seed(0)
    plain = timm.create_model(name, backend='fused', embed_dims=32, num_heads=2, depths=2, T=2)
    size = 32 if plain.patch_size == 16 else 16
    plain = timm.create_model(name, backend='fused', embed_dims=32, num_heads=2, depths=2, T=2, img_size_h=size,
                              img_size_w=size)
    checkpointed = copy.deepcopy(plain)
    checkpointed.set_grad_checkpointing(True)
    shape = (2, plain.T, plain.in_channels, size, size) if plain.events else (2, plain.in_channels, size, size)
    x = torch.rand(shape).mul(3).floor() if plain.events else torch.randn(shape)
    target = torch.randint(0, plain.num_classes, (2,))
    assert torch.equal(_step(checkpointed, x, target), _step(plain, x, target))
    for (n, p), q in zip(plain.named_parameters(), checkpointed.parameters()):
        # (Spikformer's DVS model carries parameters its forward never uses: no gradient either way)
        assert (q.grad is None and p.grad is None) or torch.equal(q.grad, p.grad), n
    for (n, a), b in zip(plain.state_dict().items(), checkpointed.state_dict().values()):
        assert torch.equal(b, a), n
