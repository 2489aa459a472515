"""The fast neuron path ('fused') is pinned to SpikingJelly's 'torch' backend and to the published numerics on CPU."""
import functools

import pytest
import timm
import torch
from torch import nn

from conftest import reference_model
import models
from models.fused_lif import LIFFunction, fused_lif
from models.neuron import LIF, resolve_backend


def _inputs(tau, v_threshold, dtype=torch.float32, shape=(6, 3, 2000)):
    """Random drive with firing rates of 10-60%, plus inputs that land exactly on the threshold at t = 1."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(*shape, generator=g) * 1.5 + 0.6
    x[0, 0, :50] = v_threshold * tau  # h_1 = x / tau == v_threshold exactly: must fire
    x[0, 1, :50] = torch.nextafter(torch.tensor(v_threshold * tau), torch.tensor(0.))  # just below: must not
    return x.to(dtype)


def _run(backend, x, tau, v_threshold, train=True):
    neuron = LIF(tau=tau, v_threshold=v_threshold, backend=backend).train(train)
    x = x.clone().requires_grad_(train)
    spikes = neuron(x)
    if not train:
        return spikes, None
    grad_out = torch.randn(spikes.shape, generator=torch.Generator().manual_seed(2)).to(spikes.dtype)
    spikes.backward(grad_out)
    return spikes.detach(), x.grad


@pytest.mark.parametrize('tau', [2.0, 1.5])
@pytest.mark.parametrize('v_threshold', [1.0, 0.5])
def test_fused_matches_torch_backend(tau, v_threshold):
    x = _inputs(tau, v_threshold)
    s_ref, g_ref = _run('torch', x, tau, v_threshold)
    s_fused, g_fused = _run('fused', x, tau, v_threshold)
    assert torch.equal(s_fused, s_ref)  # bit-identical spikes
    assert 0.1 < s_ref.mean() < 0.6
    assert s_ref[0, 0, :50].eq(1).all() and s_ref[0, 1, :50].eq(0).all()
    torch.testing.assert_close(g_fused, g_ref, rtol=1e-5, atol=1e-7)
    # inference: SpikingJelly's separate eval kernel, same spikes
    s_eval_ref, _ = _run('torch', x, tau, v_threshold, train=False)
    s_eval, _ = _run('fused', x, tau, v_threshold, train=False)
    assert torch.equal(s_eval, s_eval_ref) and torch.equal(s_eval, s_ref)


def test_fused_divides_by_tau():
    """For tau = 1.5 a multiplication by 1/tau flips spikes at the threshold (docs/recipe.md section 1); the fused path
    divides.

    Step 1 leaves a potential v below the threshold; the step-2 inputs are the floats around the one that charges v
    exactly to the threshold 1.
    """
    tau = 1.5
    v = torch.rand(500, generator=torch.Generator().manual_seed(3)) * 0.9
    x1 = (v * tau)[:, None].expand(-1, 64)
    bits = (v + tau * (1 - v)).view(torch.int32)[:, None] + torch.arange(-32, 32, dtype=torch.int32)
    x2 = bits.view(torch.float32)
    x = torch.stack([x1, x2])
    v1 = x1 / tau
    divided = (v1 + (x2 - v1) / tau >= 1.).float()
    multiplied = (v1 + (x2 - v1) * (1 / tau) >= 1.).float()
    assert not torch.equal(divided, multiplied)  # the two roundings really flip spikes here
    for backend in ('fused', 'torch'):
        spikes = LIF(tau=tau, backend=backend)(x)
        assert torch.equal(spikes[1], divided), backend


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_fused_reduced_precision(dtype):
    """Half-precision input: spikes identical to the 'torch' backend in that dtype; the backward runs in float32."""
    tau, v_threshold = 2.0, 1.0
    x = _inputs(tau, v_threshold, dtype)
    s_ref, g_ref = _run('torch', x, tau, v_threshold)
    s_fused, g_fused = _run('fused', x, tau, v_threshold)
    assert s_fused.dtype == dtype and g_fused.dtype == dtype
    assert torch.equal(s_fused, s_ref)
    # the float32 backward from the same potentials is the accurate one; the torch backend rounds every op
    h = torch.empty_like(x)
    from models.fused_lif import lif_backward, lif_forward
    lif_forward(x, tau, v_threshold, h)
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(2)).to(dtype)
    exact = lif_backward(grad_out.double(), h.double(), tau, v_threshold, 4.)
    err_fused = (g_fused.double() - exact).norm() / exact.norm()
    err_ref = (g_ref.double() - exact).norm() / exact.norm()
    assert err_fused <= err_ref and err_fused < 5e-3


@pytest.mark.parametrize('train', [False, True])
def test_fused_under_autocast_matches_torch_backend(reference, train):
    """Under CPU bf16 autocast the torch backend's TorchScript charge returns float32, so its recurrence and spikes
    are float32 (its eval kernel writes them as bfloat16); the fused path upcasts to match: identical spikes, of the
    same dtype, in every neuron of the reference model."""
    out = {}
    for backend in ('torch', 'fused'):
        model = reference_model(reference, backend).train(train)
        spikes = _record_spikes(model)
        with torch.set_grad_enabled(train), torch.autocast('cpu', dtype=torch.bfloat16):
            logits = model(reference['input'])
        if train:
            logits.float().sum().backward()
        out[backend] = logits.float().detach(), spikes
    for name, s_ref in out['torch'][1].items():
        s = out['fused'][1][name]
        assert s.dtype == s_ref.dtype == (torch.float32 if train else torch.bfloat16), name
        assert torch.equal(s, s_ref), name
    torch.testing.assert_close(out['fused'][0], out['torch'][0], rtol=0, atol=0)


def test_fused_shapes_layouts_and_graph():
    x = torch.randn(4, 2, 5, 6, 7)
    for t in (1, 2, 4):  # any number of steps, T = 1 included
        torch.testing.assert_close(fused_lif(x[:t], 2., 1.), LIF(backend='torch').eval()(x[:t]), rtol=0, atol=0)
    # channels-last and non-contiguous inputs keep their values and, where dense, their layout
    cl = x.flatten(0, 1).contiguous(memory_format=torch.channels_last).reshape(4, 2, 5, 6, 7)
    assert torch.equal(fused_lif(cl, 2., 1.), fused_lif(x, 2., 1.))
    nc = x.transpose(3, 4)
    assert torch.equal(fused_lif(nc, 2., 1.), fused_lif(nc.contiguous(), 2., 1.))
    # no graph without a gradient to compute; one node, saving a single [T, ...] tensor, with one
    assert fused_lif(x.requires_grad_(), 2., 1.).grad_fn is not None
    with torch.no_grad():
        assert fused_lif(x, 2., 1.).grad_fn is None
    assert LIF(backend='fused')(x).grad_fn.__class__.__name__ == LIFFunction.__name__ + 'Backward'


def _saved_bytes(backend, x):
    saved = []

    def pack(t):
        saved.append(t.untyped_storage().nbytes())
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        LIF(backend=backend)(x)
    return sum(saved)


def test_fused_keeps_less_for_the_backward():
    x = torch.randn(4, 8, 1000, requires_grad=True)
    fused, ref = _saved_bytes('fused', x), _saved_bytes('torch', x)
    assert fused == x.numel() * x.element_size()  # h_seq only
    assert ref >= 2 * fused


def test_auto_picks_the_fused_path_on_cpu():
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        assert resolve_backend('auto', torch.zeros(1, dtype=dtype)) == 'fused'
    assert resolve_backend('fused', torch.zeros(1)) == 'fused'
    model = timm.create_model('spikingformer_cifar_2_384')
    assert {m.requested_backend for m in model.modules() if isinstance(m, models.LIF)} == {'auto'}
    models.set_backend(model, 'fused')
    assert {m.requested_backend for m in model.modules() if isinstance(m, models.LIF)} == {'fused'}


def _record_spikes(model):
    spikes = {}
    for name, module in model.named_modules():
        if isinstance(module, models.LIF):
            module.register_forward_hook(functools.partial(lambda n, m, i, o: spikes.__setitem__(n, o.detach()), name))
    return spikes


@pytest.mark.parametrize('train', [False, True])
def test_fused_model_matches_torch_backend_on_the_reference(reference, train):
    """The whole reference model: identical spikes in every neuron, logits within 1e-5, gradients per the README."""
    out = {}
    for backend in ('torch', 'fused'):
        model = reference_model(reference, backend).train(train)
        spikes = _record_spikes(model)
        with torch.set_grad_enabled(train):
            logits = model(reference['input'])
        grads = None
        if train:
            nn.functional.cross_entropy(logits, reference['target']).backward()
            grads = {n: p.grad for n, p in model.named_parameters()}
        out[backend] = logits.detach(), spikes, grads
    (l_ref, s_ref, g_ref), (l_fused, s_fused, g_fused) = out['torch'], out['fused']
    assert s_ref.keys() == s_fused.keys() and len(s_ref) == 2 * 7 + 4
    for name in s_ref:
        assert torch.equal(s_fused[name], s_ref[name]), name
    torch.testing.assert_close(l_fused, l_ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(l_fused, reference['logits_train' if train else 'logits_eval'], rtol=0, atol=1e-5)
    if train:
        floor = 1e-4 * max(g.norm() for g in g_ref.values())
        for name, g in g_ref.items():
            err = (g_fused[name] - g).norm() / max(g.norm(), floor)
            assert err < 1e-4, (name, err.item())
