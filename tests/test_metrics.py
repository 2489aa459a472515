"""``utils.training.engine.evaluate`` on hand-made logits: top-1 and top-5 on samples where they differ, over batches of
unequal size, with ``limit_batches``, and sharded over two processes (gloo) as a distributed run evaluates, against
counts made by hand. The "model" returns each sample's logits, the images being the samples' indices."""
import json
import math
import subprocess
import sys

import pytest
import torch
from torch.utils.data import Dataset

from helpers import REPO, finish, on_a_free_port
from utils.training.engine import evaluate

CLASSES = 10
# The rank of each sample's target among its logits (1 = the largest): 3 top-1 hits, 9 top-5 hits of 13, including
# ranks 5 (a top-5 hit) and 6 (a miss) at the boundary.
RANKS = [1, 2, 5, 6, 1, 10, 3, 1, 7, 4, 5, 2, 9]


def target_of(i: int) -> int:
    return (3 * i + 1) % CLASSES


def logits_of(i: int) -> list:
    """Distinct logits, scaled per sample, whose ``RANKS[i]``-th largest is the target's."""
    target = target_of(i)
    others = [(target + 1 + k + i) % CLASSES for k in range(CLASSES)]
    others = [c for c in others if c != target]
    order = others[:RANKS[i] - 1] + [target] + others[RANKS[i] - 1:]
    row = [0.0] * CLASSES
    for position, c in enumerate(order):
        row[c] = (CLASSES - position) * (0.3 + 0.1 * i)
    return row


LOGITS = torch.tensor([logits_of(i) for i in range(len(RANKS))])


def expected(indices) -> dict:
    """The metrics by hand: hits counted from RANKS, the loss from the log-sum-exp in float64."""
    indices = list(indices)
    loss = sum(math.log(sum(math.exp(v) for v in logits_of(i))) - logits_of(i)[target_of(i)] for i in indices)
    return dict(top1=100.0 * sum(RANKS[i] == 1 for i in indices) / len(indices),
                top5=100.0 * sum(RANKS[i] <= 5 for i in indices) / len(indices), loss=loss / len(indices),
                samples=len(indices))


class Lookup(torch.nn.Module):
    """A model whose inputs are row indices of ``table``, its outputs those rows."""

    def __init__(self, table: torch.Tensor = LOGITS):
        super().__init__()
        self.table = table

    def forward(self, indices):
        return self.table[indices.long()]


class Samples(Dataset):
    def __len__(self):
        return len(RANKS)

    def __getitem__(self, i):
        return torch.tensor(i), target_of(i)


def batches(sizes) -> list:
    out, start = [], 0
    for size in sizes:
        indices = torch.arange(start, start + size)
        out.append((indices, torch.tensor([target_of(i) for i in indices.tolist()])))
        start += size
    return out


def check(metrics: dict, reference: dict) -> None:
    assert metrics['samples'] == reference['samples']
    assert metrics['top1'] == pytest.approx(reference['top1'], abs=1e-9)
    assert metrics['top5'] == pytest.approx(reference['top5'], abs=1e-9)
    assert metrics['loss'] == pytest.approx(reference['loss'], rel=1e-6)


def test_hand_made_ranks():
    ranks = [1 + (LOGITS[i] > LOGITS[i, target_of(i)]).sum().item() for i in range(len(RANKS))]
    assert ranks == RANKS
    reference = expected(range(len(RANKS)))
    assert (reference['top1'], reference['top5']) == (100 * 3 / 13, 100 * 9 / 13)


def test_top1_and_top5_over_batches_of_unequal_size():
    sizes = [5, 1, 4, 3]
    check(evaluate(Lookup(), batches(sizes), torch.device('cpu')), expected(range(13)))
    # per-batch accuracies averaged would be another number: the test can tell
    per_batch = [expected(range(sum(sizes[:k]), sum(sizes[:k + 1])))['top5'] for k in range(len(sizes))]
    assert sum(per_batch) / len(per_batch) != pytest.approx(expected(range(13))['top5'])
    check(evaluate(Lookup(), batches(sizes), torch.device('cpu'), limit_batches=2), expected(range(6)))


def test_fewer_than_five_classes_count_every_sample_in_the_top_5():
    outputs = torch.tensor([[0.0, 2.0, 1.0], [3.0, 1.0, 2.0]])
    loader = [(torch.arange(2), torch.tensor([0, 0]))]
    metrics = evaluate(Lookup(outputs), loader, torch.device('cpu'))
    assert (metrics['top1'], metrics['top5']) == (50.0, 100.0)


SHARDED = '''
import json, sys
sys.path[:0] = [{repo!r}, {tests!r}]
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from test_metrics import Lookup, Samples
from utils.data.loaders import Shard
from utils.training.engine import evaluate
rank, port = int(sys.argv[1]), sys.argv[2]
dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{{port}}', rank=rank, world_size=2)
loader = DataLoader(Shard(Samples(), rank, 2), batch_size=4)
print(json.dumps(evaluate(Lookup(), loader, torch.device('cpu'), distributed=True, is_main=rank == 0)))
dist.destroy_process_group()
'''


def test_two_processes_evaluate_their_shards_into_the_exact_metrics():
    """13 samples: rank 0 evaluates 7 (batches of 4 and 3), rank 1 evaluates 6 (4 and 2); both report the metrics of
    all 13, which neither shard has on its own."""
    code = SHARDED.format(repo=str(REPO), tests=str(REPO / 'tests'))

    def start(port):
        return finish([subprocess.Popen([sys.executable, '-c', code, str(rank), str(port)], cwd=REPO, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE) for rank in range(2)],
                      timeout=300)

    results = on_a_free_port(start)
    reference = expected(range(13))
    for returncode, out, err in results:
        assert returncode == 0, err[-3000:]
        check(json.loads(out.strip().splitlines()[-1]), reference)
    for rank in range(2):
        shard = expected(range(rank, 13, 2))
        assert (shard['top1'], shard['top5']) != (reference['top1'], reference['top5'])
