from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
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


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.manual_seed(0)
    yield
