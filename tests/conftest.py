import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# The published code's outputs on a tiny model live in the shared folder beside the checkout.
REFERENCE = Path(os.environ.get('SPIKINGFORMER_REFERENCE',
                                REPO.parent / 'shared' / 'reference' / 'spikingformer_cifar_tiny.pt'))


@pytest.fixture(scope='session')
def reference():
    assert REFERENCE.is_file(), f'reference fixture missing: {REFERENCE} (set SPIKINGFORMER_REFERENCE)'
    return torch.load(REFERENCE, weights_only=True)['cifar_style']


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.manual_seed(0)
    yield
