"""The model package: every variant, exact parameter counts, the published numerics, state, checkpoints, autocast."""
import functools
import re

import pytest
import timm
import torch
from torch import nn

from conftest import reference_model
from helpers import assert_reference_training_step, lif_rates
import models
from models.neuron import cupy_available, resolve_backend

# docs/recipe.md section 3: (registered name, extra kwargs, exact parameter count without the unused LayerNorms)
PARAM_COUNTS = [
    ('spikingformer_8_384', {}, 16_816_024),
    ('spikingformer_8_512', {}, 29_689_384),
    ('spikingformer_8_768', {}, 66_338_632),
    ('spikingformer_cifar_4_256', {}, 4_152_106),
    ('spikingformer_cifar_2_384', {}, 5_762_746),
    ('spikingformer_cifar_4_384', {}, 9_320_122),
    ('spikingformer_cifar_4_384', {'num_classes': 100, 'num_heads': 8}, 9_354_772),
    ('spikingformer_dvs_2_256', {}, 2_566_923),
    ('spikingformer_dvs_2_256', {'num_classes': 10}, 2_566_666),
]


def _small_input(model, batch=2):
    """A small input of the model's kind: spatial size is free (tokens follow the input), so keep it tiny."""
    side = 4 * model.patch_size
    if model.events:
        return torch.rand(batch, model.T, model.in_channels, side, side).round() * 3
    return torch.randn(batch, model.in_channels, side, side)


@pytest.mark.parametrize('name,kwargs,count', PARAM_COUNTS)
def test_parameter_count(name, kwargs, count):
    model = timm.create_model(name, **kwargs)
    assert sum(p.numel() for p in model.parameters()) == count


def test_every_published_variant_is_registered():
    assert set(models.VARIANTS) <= set(timm.list_models('spikingformer*'))
    assert 'Spikingformer' in timm.list_models('Spikingformer')


@pytest.mark.parametrize('name', models.VARIANTS)
def test_forward_backward_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    model = timm.create_model(name, **({'T': 2} if 'dvs' in name else {}))
    for m in model.modules():  # at init and with few tokens the attention LIF may stay silent; excite it
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.constant_(m.bias, 0.5)
    model.train()
    x = _small_input(model)
    out = model(x)
    assert out.shape == (2, model.num_classes)
    out.square().sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        if p.dim() > 1:  # weights; biases right before a BatchNorm have a true gradient of zero
            assert p.grad.abs().sum() > 0, pname


def test_imagenet_8_768_on_a_full_image():
    model = timm.create_model('spikingformer_8_768')
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


def _published_to_own(name):
    return models.checkpoint._rename(name)


def _reference_rates(reference: dict) -> dict:
    """The record's firing rates by this project's module names (the published tokenizer's ``block{i}_lif`` or
    ``proj{i}_lif`` is ``patch_embed.stages.{i-1}.lif`` here; the blocks' names are the published ones)."""
    return {re.sub(r'^patch_embed\.(?:block|proj)([1-4])_lif$', lambda m: f'patch_embed.stages.{int(m[1]) - 1}.lif',
                   name): rate for name, rate in reference['lif_rates'].items()}


@pytest.mark.parametrize('backend', ['fused', 'torch'])
def test_reference_eval_logits_and_firing_rates(layout_reference, backend):
    """Every published layout (CIFAR, ImageNet, DVS with tau 1.5 on event frames) computes what the published code
    computed, on both CPU neuron paths: logits and every neuron's firing rate."""
    reference = layout_reference
    model = reference_model(reference, backend).eval()
    rates = lif_rates(model)
    with torch.no_grad():
        logits = model(reference['input'])
    torch.testing.assert_close(logits, reference['logits_eval'], atol=1e-4, rtol=0)
    expected = _reference_rates(reference)
    assert set(rates) == set(expected)
    for name, rate in expected.items():
        assert rates[name] == pytest.approx(rate, abs=1e-6), name


@pytest.mark.parametrize('backend', ['fused', 'torch'])
def test_reference_train_logits_loss_and_gradients(layout_reference, backend):
    model = reference_model(layout_reference, backend).train()
    assert_reference_training_step(model, layout_reference, _published_to_own,  # the unused LayerNorms: not built
                                   unbuilt=lambda own: re.match(r'block\.\d+\.norm[12]\.', own))


@pytest.mark.parametrize('training', [False, True])
def test_no_state_leaks_between_calls(reference, training):
    model = reference_model(reference).train(training)
    a, b = reference['input'][:3], reference['input'][3:]
    fresh = reference_model(reference).train(training)
    with torch.no_grad():
        expected = fresh(b)
        model(a)
        model(a * 3)
        torch.testing.assert_close(model(b), expected, atol=0, rtol=0)


def test_reset_net_stays_harmless(reference):
    from spikingjelly.activation_based import functional
    model = reference_model(reference).eval()
    with torch.no_grad():
        first = model(reference['input'])
        functional.reset_net(model)
        torch.testing.assert_close(model(reference['input']), first, atol=0, rtol=0)


@pytest.mark.parametrize('tau,threshold', [(2.0, 1.0), (1.5, 1.0), (2.0, 0.5)])
def test_lif_follows_the_spec_recurrence(tau, threshold):
    torch.manual_seed(1)
    x = torch.randn(6, 4, 50) * 2
    neuron = models.lif(tau=tau, v_threshold=threshold)
    spikes = neuron(x)
    v = torch.zeros_like(x[0])
    for t in range(x.shape[0]):  # docs/recipe.md section 1, dividing by tau
        h = v + (x[t] - v) / tau
        s = (h >= threshold).float()
        v = h * (1 - s)
        assert torch.equal(spikes[t], s), t


def test_backend_choice():
    x = torch.randn(2, 3)
    assert resolve_backend('auto', x) != 'cupy'  # CPU input never goes to the CuPy kernel
    assert resolve_backend('torch', x) == 'torch'
    with pytest.raises(ValueError, match='unknown neuron backend'):
        models.lif(backend='cuda')
    if cupy_available():
        with pytest.raises(RuntimeError, match='CUDA tensor'):
            resolve_backend('cupy', x)
    else:
        with pytest.raises(RuntimeError, match='CuPy is not installed'):
            models.lif(backend='cupy')
    model = timm.create_model('spikingformer_cifar_2_384', backend='torch')
    assert {m.requested_backend for m in model.modules() if isinstance(m, models.LIF)} == {'torch'}
    models.set_backend(model, 'auto')
    assert {m.requested_backend for m in model.modules() if isinstance(m, models.LIF)} == {'auto'}


def test_generic_entry_point_takes_the_published_keywords():
    model = timm.create_model(
        'Spikingformer', pretrained=False, drop_rate=0., drop_path_rate=0.1, drop_block_rate=None,
        img_size_h=32, img_size_w=32, patch_size=4, embed_dims=384, num_heads=12, mlp_ratios=4, in_channels=3,
        num_classes=10, qkv_bias=False, qk_scale=None, norm_layer=functools.partial(nn.LayerNorm, eps=1e-6),
        depths=4, sr_ratios=1, T=4, pretrained_cfg_overlay={}, cache_dir=None)
    assert model.layout == 'cifar'
    assert sum(p.numel() for p in model.parameters()) == 9_320_122
    with pytest.raises(ValueError, match='patch size'):
        timm.create_model('Spikingformer', layout='cifar', patch_size=16)
    with pytest.raises(TypeError):
        timm.create_model('spikingformer_8_384', not_a_keyword=1)
    with pytest.raises(RuntimeError, match='load_checkpoint'):
        timm.create_model('spikingformer_8_384', pretrained=True)


def test_dvs_model_takes_event_frames_and_checks_T():
    model = timm.create_model('spikingformer_dvs_2_256', T=3, embed_dims=64, num_heads=4)
    assert model.tau == 1.5 and all(m.tau == 1.5 for m in model.modules() if isinstance(m, models.LIF))
    with torch.no_grad():
        assert model(torch.rand(2, 3, 2, 32, 32)).shape == (2, 11)
    with pytest.raises(ValueError, match='time steps'):
        model(torch.rand(2, 4, 2, 32, 32))
    with pytest.raises(ValueError, match=r'\[B, T, C, H, W\]'):
        model(torch.rand(2, 2, 32, 32))


# ---- checkpoints -----------------------------------------------------------------------------------------------

def _as_published_imagenet(state):
    """Our names -> the published ImageNet/DVS tokenizer names, plus the unused LayerNorm tensors."""
    out = {}
    for key, value in state.items():
        key = key.replace('patch_embed.stem_', 'patch_embed.proj_')
        key = re.sub(r'^patch_embed\.stages\.(\d)\.(conv|bn)\.', lambda m: f'patch_embed.proj{int(m[1]) + 1}_{m[2]}.',
                     key)
        out[key] = value
    dims = state['head.weight'].shape[1]
    for i in range(len({k.split('.')[1] for k in state if k.startswith('block.')})):
        for norm in ('norm1', 'norm2'):
            out[f'block.{i}.{norm}.weight'] = torch.ones(dims)
            out[f'block.{i}.{norm}.bias'] = torch.zeros(dims)
    return out


def _small_imagenet_model(seed):
    torch.manual_seed(seed)
    model = timm.create_model('Spikingformer', layout='imagenet', embed_dims=32, num_heads=2, depths=2,
                              num_classes=5, img_size_h=32, img_size_w=32)
    for m in model.modules():  # non-trivial BatchNorm statistics so that the outputs tell models apart
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.mark.parametrize('wrap', ['raw', 'state_dict', 'state_dict_ema', 'model', 'module_prefix'])
def test_filter_loads_published_imagenet_layout(wrap):
    source, target = _small_imagenet_model(0), _small_imagenet_model(1)
    published = _as_published_imagenet(source.state_dict())
    assert 'patch_embed.proj3_conv.weight' in published and 'block.1.norm2.bias' in published
    if wrap == 'module_prefix':
        checkpoint = {'state_dict': {f'module.{k}': v for k, v in published.items()}, 'epoch': 3}
    elif wrap == 'raw':
        checkpoint = published
    else:
        checkpoint = {wrap: published, 'epoch': 3}
    target.load_state_dict(models.checkpoint_filter_fn(checkpoint, target), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x), atol=0, rtol=0)


def test_filter_prefers_ema_only_when_asked():
    model = _small_imagenet_model(0)
    plain, ema = model.state_dict(), {k: v.clone() for k, v in model.state_dict().items()}
    ema['head.bias'] = ema['head.bias'] + 1
    checkpoint = {'state_dict': plain, 'state_dict_ema': ema}
    assert torch.equal(models.checkpoint_filter_fn(checkpoint, model)['head.bias'], plain['head.bias'])
    assert torch.equal(models.checkpoint_filter_fn(checkpoint, model, use_ema=True)['head.bias'], ema['head.bias'])
    with pytest.raises(models.CheckpointError, match='state_dict_ema'):
        models.checkpoint_filter_fn({'state_dict': plain}, model, use_ema=True)


def test_filter_names_what_disagrees_for_another_architecture():
    small = timm.create_model('spikingformer_cifar_4_256')
    large = timm.create_model('spikingformer_cifar_4_384')
    with pytest.raises(models.CheckpointError, match=r'shape mismatch \(\d+\): patch_embed\.stem_conv\.weight'):
        models.checkpoint_filter_fn({'state_dict': small.state_dict()}, large)
    shallow = timm.create_model('spikingformer_cifar_2_384')
    with pytest.raises(models.CheckpointError, match=r'missing \(\d+\): block\.2\.'):
        models.checkpoint_filter_fn(shallow.state_dict(), large)


def test_load_checkpoint_file_errors(tmp_path, reference):
    model = reference_model(reference)
    with pytest.raises(models.CheckpointError, match='not found'):
        models.load_checkpoint(model, str(tmp_path / 'nope.pth.tar'))
    good = tmp_path / 'good.pth.tar'
    torch.save({'state_dict': reference['state_dict'], 'epoch': 1}, good)
    truncated = tmp_path / 'truncated.pth.tar'
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(models.CheckpointError, match='truncated or corrupt'):
        models.load_checkpoint(model, str(truncated))
    assert models.load_checkpoint(model, str(good))['epoch'] == 1


# ---- autocast --------------------------------------------------------------------------------------------------

# Measured bf16-vs-float32 drift on the three records (both paths alike): per-LIF firing rates at most 0.0024 (CIFAR),
# 0.0056 (ImageNet), 0.0094 (DVS); logits at most 0.052 / 0.040 / 0.081, on average 0.019 / 0.013 / 0.015. A wrong
# constant moves some LIF's rate by at least 0.041 (attention scale 0.25 instead of 0.125: 0.041 / 0.048 / 0.061;
# attention threshold 1.0 instead of 0.5: 0.051 / 0.067 / 0.105; tau 1.5 for 2, or 2 for DVS's 1.5: 0.17-0.30;
# threshold 0.5 for 1.0: 0.41-0.47), while the logits' drift alone cannot tell the attention scale apart.
BF16_RATE_TOL = 0.02
BF16_LOGIT_MEAN_TOL, BF16_LOGIT_MAX_TOL = 0.04, 0.2


@pytest.mark.parametrize('backend', ['fused', 'torch'])
def test_bf16_autocast_on_cpu(layout_reference, backend):
    """Every layout under CPU bf16 autocast stays near the published float32 outputs: every LIF's firing rate within
    BF16_RATE_TOL of the reference (bf16 rounds each convolution's output to about 3 significant digits and flips a
    few spikes), the logits close. Training under bf16 is only checked for finite logits and gradients: on these
    tiny records with BatchNorm on batch statistics, an input perturbation of bf16's size (0.4%) alone moves the
    CIFAR and ImageNet float32 training logits by 0.37, so there is no bf16 training output to pin."""
    reference = layout_reference
    model = reference_model(reference, backend).eval()
    rates = lif_rates(model)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        low = model(reference['input']).float()
    expected = _reference_rates(reference)
    assert set(rates) == set(expected)
    for name, rate in expected.items():
        assert rates[name] == pytest.approx(rate, abs=BF16_RATE_TOL), name
    drift = (low - reference['logits_eval']).abs()
    assert drift.mean() < BF16_LOGIT_MEAN_TOL and drift.max() < BF16_LOGIT_MAX_TOL, drift
    model.train()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        logits = model(reference['input'])
    assert torch.isfinite(logits).all()
    nn.functional.cross_entropy(logits.float(), reference['target']).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
