"""``models.attention_product`` (public: the energy tools and users' own models call it) and the channel-first form
the model runs are ``Q K^T V`` exactly, in either multiplication order, for binary operands of both shape regimes
(N <= d and N > d). Written for the mutation check (scripts/mutation_check.py), whose 'attention-softmax' mutant
of the N > d branch no other test noticed."""
import pytest
import torch

from models import attention_product
from models.layers import attention_product_channels_first


@pytest.mark.parametrize('n, d', [(4, 8), (8, 8), (16, 4), (64, 12)])
def test_attention_product_is_q_kt_v(n, d):
    g = torch.Generator().manual_seed(n * 100 + d)
    q, k, v = ((torch.rand(2, 3, n, d, generator=g) < 0.3).float() for _ in range(3))
    expected = torch.einsum('...nd,...md,...me->...ne', q.double(), k.double(), v.double()).float()
    torch.testing.assert_close(attention_product(q, k, v), expected, rtol=0, atol=0)
    channels_first = attention_product_channels_first(q.transpose(-2, -1), k.transpose(-2, -1), v.transpose(-2, -1))
    torch.testing.assert_close(channels_first, expected.transpose(-2, -1), rtol=0, atol=0)
