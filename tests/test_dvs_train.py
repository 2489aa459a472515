"""End to end on tiny synthetic event data: prepare_dvs.py --synthetic, one epoch of each DVS train.py (the
published recipe's config, shrunk: tiny model, T=2, a few batches), resume, then test.py and results.json."""
import csv
import json
import math
import runpy
import sys

import pytest

from helpers import REPO, TINY_MODEL
from utils.training import main as engine  # (not `from ... import test_main`: pytest would collect it)


def run_script(monkeypatch, path, argv):
    """Run an entry point file as ``python path argv...`` would, in this process."""
    monkeypatch.setattr(sys, 'argv', [str(path)] + list(argv))
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(path), run_name='__main__')
    assert exit_.value.code == 0


CONFIGS = {'dvs128-gesture': REPO / 'dvs128-gesture' / 'dvs128gesture.yml',
           'cifar10-dvs': REPO / 'cifar10-dvs' / 'cifar10dvs.yml'}
TINY = TINY_MODEL + ['-T', '2', '--batch-size', '4', '--val-batch-size', '8', '--workers', '0', '--cooldown-epochs',
                     '0', '--warmup-epochs', '0', '--no-amp', '--neuron-backend', 'torch']


@pytest.mark.parametrize('dataset', ['dvs128-gesture', 'cifar10-dvs'])
def test_one_epoch_then_resume_then_test_py(synthetic_roots, tmp_path, monkeypatch, dataset):
    root = synthetic_roots[dataset]
    run = tmp_path / 'run'
    # mixup on (the recipe's values) so the batch mixup path runs on event frames
    run_script(monkeypatch, REPO / dataset / 'train.py', ['--data-dir', str(root), '--output', str(run),
                                                          '--epochs', '1', '--limit-train-batches', '2'] + TINY)
    for name in ('args.yaml', 'summary.csv', 'log.txt', 'last.pth.tar', 'model_best.pth.tar',
                 'train_files.txt', 'test_files.txt'):
        assert (run / name).is_file(), name
    train_files = (run / 'train_files.txt').read_text().split()
    test_files = (run / 'test_files.txt').read_text().split()
    events = root / 'events_np'
    if dataset == 'dvs128-gesture':  # the trials files decide: recordings of user01 train, of user02 test
        assert all(f.startswith('events_np/train/') for f in train_files)
        assert all(f.startswith('events_np/test/') for f in test_files)
        assert len(train_files) == len(test_files) == 11
    else:  # 10 per class: the first ceil(0.9 * 10) = 9 in sorted order train, the last one test
        for cls_dir in sorted(events.iterdir()):
            names = sorted(p.name for p in cls_dir.glob('*.npz'))
            cut = math.ceil(0.9 * len(names))
            assert [f for f in train_files if f.split('/')[1] == cls_dir.name] == \
                [f'events_np/{cls_dir.name}/{n}' for n in names[:cut]]
            assert [f for f in test_files if f.split('/')[1] == cls_dir.name] == \
                [f'events_np/{cls_dir.name}/{n}' for n in names[cut:]]
    assert all((root / f).is_file() for f in train_files + test_files)
    assert not set(train_files) & set(test_files)

    # resume continues with the next epoch in the same run folder
    engine.train_main(['--resume', str(run / 'last.pth.tar'), '--data-dir', str(root), '--output', str(run),
                       '--epochs', '2', '--limit-train-batches', '1'] + TINY, str(CONFIGS[dataset]))
    with open(run / 'summary.csv') as f:
        rows = list(csv.DictReader(f))
    assert [int(r['epoch']) for r in rows] == [0, 1]

    out = tmp_path / 'test'
    run_script(monkeypatch, REPO / dataset / 'test.py',
               ['--checkpoint', str(run / 'last.pth.tar'), '--output', str(out)])
    saved = json.loads((out / 'results.json').read_text())
    assert saved['samples'] == len(test_files)
    assert saved['dataset'] == dataset
    assert saved['top1'] == pytest.approx(float(rows[-1]['eval_top1']))
