"""The Spikformer baseline (models.spikformer): the published code's outputs on all three layouts and both CPU neuron
paths, the parameter count of every variant, timm's registry, and published Spikformer checkpoints."""
import functools
import re

import pytest
import timm
import torch
from torch import nn

import models
from conftest import FIXTURES
from helpers import assert_reference_training_step, lif_rates

SPIKFORMER_RECORDS = {'imagenet_style': 'imagenet', 'cifar_style': 'cifar', 'dvs_style': 'dvs'}

# Published parameter counts without the blocks' unused LayerNorms (docs/spikformer.md)
PARAM_COUNTS = [
    ('spikformer_8_384', {}, 16_816_024),
    ('spikformer_8_512', {}, 29_689_384),
    ('spikformer_8_768', {}, 66_338_632),
    ('spikformer_cifar_4_256', {}, 4_155_178),
    ('spikformer_cifar_2_384', {}, 5_765_050),
    ('spikformer_cifar_4_384', {}, 9_324_730),
    ('spikformer_cifar_4_384', {'num_classes': 100}, 9_359_380),
    ('spikformer_dvs_2_256', {}, 2_583_562),
]


@functools.lru_cache(maxsize=None)
def _records() -> dict:
    return torch.load(FIXTURES / 'spikformer_tiny.pt', weights_only=True)


@pytest.fixture(scope='module', params=list(SPIKFORMER_RECORDS))
def spikformer_reference(request):
    """Each Spikformer record in turn. The ImageNet file hard-codes T=4 and the DVS file takes T from its input
    ([B, 4, 2, 128, 128] here), so their kwargs carry no T: it is 4 for all three."""
    record = dict(_records()[request.param])
    record['kwargs'] = dict(record['kwargs'], layout=SPIKFORMER_RECORDS[request.param], T=4)
    return record


def spikformer_model(record: dict, backend: str = 'auto') -> nn.Module:
    model = timm.create_model('Spikformer', **record['kwargs'], backend=backend)
    model.load_state_dict(models.checkpoint_filter_fn(record['state_dict'], model), strict=True)
    return model.eval()


def _own_lif_name(published: str) -> str:
    """The published SPS tokenizer's ``proj_lif``, ``proj_lif{i}``, ``rpe_lif`` and MLP ``fc{i}_lif`` by this
    project's module names."""
    name = re.sub(r'^patch_embed\.proj_lif$', 'patch_embed.stages.0.lif', published)
    name = re.sub(r'^patch_embed\.proj_lif([1-3])$', lambda m: f'patch_embed.stages.{m[1]}.lif', name)
    name = name.replace('patch_embed.rpe_lif', 'patch_embed.stages.3.rpe_lif')
    return re.sub(r'\.mlp\.fc([12])_lif$', r'.mlp.mlp\1_lif', name)


@pytest.mark.parametrize('backend', ['fused', 'torch'])
def test_reference_eval_logits_and_firing_rates(spikformer_reference, backend):
    """Every published Spikformer layout (ImageNet; CIFAR with nn.Linear layers; DVS with attention scale 0.25)
    computes what the published code computed, on both CPU neuron paths: logits and every neuron's firing rate."""
    reference = spikformer_reference
    model = spikformer_model(reference, backend)
    rates = lif_rates(model)
    with torch.no_grad():
        logits = model(reference['input'])
    torch.testing.assert_close(logits, reference['logits_eval'], atol=1e-4, rtol=0)
    expected = {_own_lif_name(name): rate for name, rate in reference['lif_rates'].items()}
    assert set(rates) == set(expected)
    for name, rate in expected.items():
        assert rates[name] == pytest.approx(rate, abs=1e-6), name


@pytest.mark.parametrize('backend', ['fused', 'torch'])
def test_reference_train_logits_loss_and_gradients(spikformer_reference, backend):
    model = spikformer_model(spikformer_reference, backend).train()
    assert_reference_training_step(model, spikformer_reference, models.checkpoint._rename)


def test_the_residual_stream_adds_spikes_to_spikes(spikformer_reference):
    """conv-BN-LIF: the tokenizer and every block output spike counts (integers, some above 1), which is what the
    next block's Q/K/V and first MLP layer read; Spikingformer's stream carries real BatchNorm outputs instead."""
    model = spikformer_model(spikformer_reference)
    seen = []
    for module in [model.patch_embed, *model.block]:
        module.register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        model(spikformer_reference['input'])
    for out in seen:
        assert torch.equal(out, out.round()) and out.min() >= 0 and out.max() >= 2
    assert seen[-1].max() <= 2 + 2 * len(model.block)  # each of the 2 + 2 * depth LIF outputs adds at most 1


@pytest.mark.parametrize('name,kwargs,count', PARAM_COUNTS)
def test_parameter_count(name, kwargs, count):
    with torch.device('meta'):
        model = timm.create_model(name, **kwargs)
    assert sum(p.numel() for p in model.parameters()) == count


@pytest.mark.parametrize('name', models.SPIKFORMER_VARIANTS)
def test_create_model_every_registered_name(name):
    """timm builds each variant; a small input runs forward and backward and every trainable parameter gets a
    gradient (the DVS file's unused pos_embed and norm are frozen, so DDP needs no find_unused_parameters)."""
    assert name in timm.list_models('spikformer*')
    small = dict(embed_dims=64, num_heads=4, depths=1)
    model = timm.create_model(name, **small, **({'T': 2} if 'dvs' in name else {})).train()
    for m in model.modules():  # excite the BatchNorm outputs so that every LIF fires at init
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.constant_(m.bias, 0.5)
    side = 4 * model.patch_size
    x = torch.rand(2, model.T, 2, side, side).round() * 3 if model.events else torch.randn(2, 3, side, side)
    out = model(x)
    assert out.shape == (2, model.num_classes)
    out.square().sum().backward()
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen == (['pos_embed', 'norm.weight', 'norm.bias'] if 'dvs' in name else [])
    for pname, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), pname


def test_generic_entry_point_takes_the_published_keywords():
    """The published train.py passes these keywords; without ``layout``, patch size 4 is the CIFAR file."""
    model = timm.create_model(
        'Spikformer', pretrained=False, drop_rate=0., drop_path_rate=0.2, drop_block_rate=None,
        img_size_h=32, img_size_w=32, patch_size=4, embed_dims=384, num_heads=12, mlp_ratios=4, in_channels=3,
        num_classes=10, qkv_bias=False, qk_scale=None, norm_layer=functools.partial(nn.LayerNorm, eps=1e-6),
        depths=4, sr_ratios=1, T=4)
    assert model.layout == 'cifar' and isinstance(model.block[0].attn.q_linear, nn.Linear)
    assert sum(p.numel() for p in model.parameters()) == 9_324_730
    imagenet = timm.create_model('Spikformer', embed_dims=64, num_heads=4, depths=1)
    assert imagenet.layout == 'imagenet' and isinstance(imagenet.block[0].attn.q_conv, nn.Conv1d)
    assert {m.tau for m in timm.create_model('spikformer_dvs_2_256').modules() if isinstance(m, models.LIF)} == {2.0}
    with pytest.raises(ValueError, match='unknown layout'):
        timm.create_model('Spikformer', layout='gesture')


# ---- published checkpoints -------------------------------------------------------------------------------------

@pytest.mark.parametrize('wrap', ['raw', 'state_dict', 'module_prefix'])
def test_filter_loads_published_spikformer_checkpoints(spikformer_reference, wrap, tmp_path):
    """A published Spikformer state dict (SPS ``proj_conv{i}``/``rpe_conv``, ``fc{i}_*``, the blocks' LayerNorms, the
    DVS file's Conv1d MLP weights), raw or as timm's checkpoint, through models.load_checkpoint."""
    published = spikformer_reference['state_dict']
    assert 'patch_embed.rpe_conv.weight' in published and 'block.1.norm2.bias' in published
    if wrap == 'module_prefix':
        checkpoint = {'state_dict': {f'module.{k}': v for k, v in published.items()}, 'epoch': 3}
    else:
        checkpoint = published if wrap == 'raw' else {'state_dict': published, 'epoch': 3}
    path = tmp_path / 'published.pth.tar'
    torch.save(checkpoint, path)
    model = timm.create_model('Spikformer', **spikformer_reference['kwargs'])
    models.load_checkpoint(model, str(path))
    state = model.state_dict()
    torch.testing.assert_close(state['patch_embed.stages.3.conv.weight'], published['patch_embed.rpe_conv.weight'])
    torch.testing.assert_close(state['patch_embed.stages.1.bn.running_var'],
                               published['patch_embed.proj_bn2.running_var'])
    torch.testing.assert_close(state['block.1.mlp.mlp2_bn.bias'], published['block.1.mlp.fc2_bn.bias'])
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(spikformer_reference['input']), spikformer_reference['logits_eval'],
                                   atol=1e-4, rtol=0)


def test_filter_tells_spikformer_and_spikingformer_apart():
    """A Spikformer checkpoint does not load into Spikingformer (no rpe LIF there, but the weights fit): the CIFAR
    one fails on its linear layers; an own checkpoint of either model round-trips unchanged."""
    spikformer = timm.create_model('Spikformer', patch_size=4, embed_dims=32, num_heads=2, depths=1)
    spikingformer = timm.create_model('Spikingformer', patch_size=4, embed_dims=32, num_heads=2, depths=1)
    with pytest.raises(models.CheckpointError, match=r'missing \(\d+\): block\.0\.attn\.q_conv'):
        models.checkpoint_filter_fn(spikformer.state_dict(), spikingformer)
    for model in (spikformer, spikingformer):
        state = model.state_dict()
        assert models.checkpoint_filter_fn({'state_dict': state}, model).keys() == state.keys()


# ---- training with the engine ----------------------------------------------------------------------------------

def test_one_epoch_of_the_spikformer_cifar_config_trains_and_evaluates(tmp_path):
    """The published Spikformer CIFAR recipe (cifar10/spikformer_cifar10_4_384.yml), shrunk to a tiny model and one
    epoch: the engine builds the Spikformer CIFAR layout (nn.Linear layers), trains it and its checkpoint evaluates
    with test.py to the accuracy the run reported."""
    from helpers import REPO, TINY_MODEL, write_cifar10
    from utils.training import main as main_module
    data = write_cifar10(tmp_path / 'cifar', 8, test=8)
    config = str(REPO / 'cifar10' / 'spikformer_cifar10_4_384.yml')
    run = tmp_path / 'run'
    result = main_module.train_main(
        ['--config', config, '--data-dir', str(data), '--output', str(run), '-T', '1', '--img-size', '16',
         '--batch-size', '8', '--val-batch-size', '8', '--workers', '0', '--no-amp', '--epochs', '1',
         '--cooldown-epochs', '0', '--aa', 'null'] + TINY_MODEL)
    assert result['best_epoch'] == 0
    checkpoint = torch.load(run / 'last.pth.tar', weights_only=True)
    state = checkpoint['state_dict']
    assert state['block.0.attn.q_linear.bias'].shape == (32,) and 'patch_embed.stages.3.conv.weight' in state
    tested = main_module.test_main(['--checkpoint', str(run / 'last.pth.tar'), '--output', str(tmp_path / 'test')])
    assert tested['top1'] == pytest.approx(result['best_top1'])


def test_spikformer_cifar_rand_augment_draws_from_its_five_ops(tmp_path, capsys):
    """Its cifar10/aa_snn.py keeps 5 of timm's RandAugment ops; the Spikingformer configs keep timm's whole list. A
    set that cannot apply (aa not a rand- policy) is refused before training, naming both keys."""
    from helpers import CIFAR10_YML, REPO, refused, write_cifar10
    from utils.training import main as main_module
    from utils.config import load_config
    from utils.data.loaders import build_loaders
    from utils.data.rand_augment_ops import SPIKFORMER_CIFAR_OPS, _rand_augments
    data = write_cifar10(tmp_path / 'cifar', 8, test=4)
    spikformer_yml = str(REPO / 'cifar10' / 'spikformer_cifar10_4_384.yml')
    names = {}
    for config in (spikformer_yml, CIFAR10_YML):
        cfg = load_config(['--data-dir', str(data), '--workers', '0', '--batch-size', '8'], config)
        train_loader, _, _ = build_loaders(cfg)
        (augment,) = _rand_augments(train_loader.dataset.transform)
        names[config] = [op.name for op in augment.ops]
        assert augment.num_layers == 1 and {op.magnitude for op in augment.ops} == {9}
    assert names[spikformer_yml] == list(SPIKFORMER_CIFAR_OPS)
    assert set(SPIKFORMER_CIFAR_OPS) < set(names[CIFAR10_YML]) and 'PosterizeIncreasing' in names[CIFAR10_YML]
    refused(capsys, main_module.train_main,
            ['--config', spikformer_yml, '--data-dir', str(data), '--output', str(tmp_path / 'r'), '--workers', '0',
             '--aa', 'augmix-m5-w4-d2', '--batch-size', '8'], 'aa_ops', 'augmix-m5-w4-d2')
    assert not (tmp_path / 'r' / 'last.pth.tar').exists()
