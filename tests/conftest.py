import os

import pytest
import torch

from helpers import REPO, load_script

# The published code's outputs on tiny models (see tests/fixtures/README.md), inside the checkout so that a fresh
# clone runs its tests with nothing beside it.
FIXTURES = REPO / 'tests' / 'fixtures'
REFERENCE_FILES = {
    'cifar_style': FIXTURES / 'spikingformer_cifar_tiny.pt',
    'imagenet_style': FIXTURES / 'spikingformer_imagenet_dvs_tiny.pt',
    'dvs_style': FIXTURES / 'spikingformer_imagenet_dvs_tiny.pt',
}
# The published tokenizer layout of each record ('Spikingformer' guesses from patch_size, which cannot tell DVS apart).
REFERENCE_LAYOUTS = {'cifar_style': 'cifar', 'imagenet_style': 'imagenet', 'dvs_style': 'dvs'}


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` (tests/test_gpu.py) run where CUDA is available, or on CPU when ``GPU_CHECK_DEVICE=cpu``
    asks for a dry run; elsewhere they are collected and skipped with the reason (``pytest -rs`` shows it)."""
    if torch.cuda.is_available() or os.environ.get('GPU_CHECK_DEVICE') == 'cpu':
        return
    skip = pytest.mark.skip(reason='needs CUDA (torch.cuda.is_available() is False here): run them on a GPU machine '
                                   'with bash scripts/gpu_check.sh; GPU_CHECK_DEVICE=cpu runs them on CPU as a dry run')
    for item in items:
        if 'gpu' in item.keywords:
            item.add_marker(skip)


def load_reference(style: str) -> dict:
    record = dict(torch.load(REFERENCE_FILES[style], weights_only=True)[style])
    record['kwargs'] = dict(record['kwargs'], layout=REFERENCE_LAYOUTS[style])
    return record


@pytest.fixture(scope='session')
def reference():
    """The CIFAR-layout record (the published CIFAR model)."""
    return load_reference('cifar_style')


@pytest.fixture(scope='session', params=list(REFERENCE_FILES))
def layout_reference(request):
    """Each published layout's record in turn: CIFAR, ImageNet and DVS (tau 1.5, event frames)."""
    return load_reference(request.param)


def reference_model(record: dict, backend: str = 'auto') -> torch.nn.Module:
    """The record's published model, built here and loaded through the checkpoint filter, in eval mode."""
    import timm

    import models
    model = timm.create_model('Spikingformer', **record['kwargs'], backend=backend)
    model.load_state_dict(models.checkpoint_filter_fn(record['state_dict'], model), strict=True)
    return model.eval()


@pytest.fixture(scope='session', autouse=True)
def _one_thread():
    """The tests run tiny models: a second intra-op thread only adds synchronisation (tens of times slower on a busy
    machine, e.g. at batch 1), and no result depends on the thread count. One thread also keeps fork() safe for the
    tests that fork (no intra-op thread pool in the parent)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope='session')
def synthetic_roots(tmp_path_factory):
    """Prepared roots of synthetic DVS128 Gesture (2 recordings per class and split) and CIFAR10-DVS (10 per class)
    data, made by ``scripts/prepare_dvs.py --synthetic``: ``{dataset: root}``."""
    base = tmp_path_factory.mktemp('dvs')
    roots = {}
    for dataset, per_class in (('dvs128-gesture', 2), ('cifar10-dvs', 10)):
        raw, root = base / f'{dataset}-raw', base / dataset
        assert load_script('prepare_dvs').main([dataset, '--synthetic', '--raw', str(raw), '--root', str(root),
                                                '--per-class', str(per_class), '--no-progress']) == 0
        roots[dataset] = root
    return roots
