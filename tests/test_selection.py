"""Selection of the best epoch: ``model_best.pth.tar`` holds the weights of the epoch with the highest evaluation
top-1 (strictly higher: a tie keeps the earlier epoch), the run reports that epoch, and ``test.py`` on the file gives
that epoch's numbers.

A tiny run scores the same top-1 every epoch, which would leave "best" untested; here the top-1 the loop sees is
planned (up, a tie, then down) by a spy on ``utils.training.main.evaluate``, while the weights really change every epoch
and the spy keeps each epoch's real evaluation and weights to compare with."""
import copy
import json

import pytest
import torch

from helpers import CIFAR10_YML, SCHEDULE, TINY, read_summary, run, write_cifar10
from utils.training import main as main_module
from utils.training.main import test_main as evaluate_main  # not named test_* (pytest would collect it)
from utils.training.main import train_main

PLANNED_TOP1 = [20.0, 50.0, 50.0, 30.0]  # up, a tie with the best, down: epoch 1 is the best
BEST = 1


@pytest.fixture(scope='module')
def planned_run(tmp_path_factory):
    root = tmp_path_factory.mktemp('selection')
    data = write_cifar10(root / 'cifar', 16, test=24)
    real_evaluate, seen = main_module.evaluate, []

    def planned_evaluate(model, *args, **kwargs):
        metrics = real_evaluate(model, *args, **kwargs)
        seen.append(dict(metrics=dict(metrics), weights=copy.deepcopy(model.state_dict())))
        return dict(metrics, top1=PLANNED_TOP1[len(seen) - 1])

    output = root / 'run'
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(main_module, 'evaluate', planned_evaluate)
        result = train_main(['--config', CIFAR10_YML, '--data-dir', str(data), '--output', str(output),
                             '--epochs', str(len(PLANNED_TOP1)), '--limit-train-batches', '2'] + TINY + SCHEDULE)
    return dict(result=result, seen=seen, output=output, data=data)


def test_the_best_epoch_is_kept_and_reported(planned_run):
    output, seen = planned_run['output'], planned_run['seen']
    assert len(seen) == len(PLANNED_TOP1)
    assert planned_run['result']['best_epoch'] == BEST and planned_run['result']['best_top1'] == PLANNED_TOP1[BEST]
    best = torch.load(output / 'model_best.pth.tar', weights_only=True)
    last = torch.load(output / 'last.pth.tar', weights_only=True)
    assert (best['epoch'], best['best_epoch'], best['best_metric']) == (BEST, BEST, PLANNED_TOP1[BEST])
    assert (last['epoch'], last['best_epoch'], last['best_metric']) == (len(PLANNED_TOP1) - 1, BEST, PLANNED_TOP1[BEST])
    # the file holds the best epoch's weights, which differ from the tie's and the last epoch's
    for key, value in seen[BEST]['weights'].items():
        torch.testing.assert_close(best['state_dict'][key], value, rtol=0, atol=0, msg=key)
    for later in (BEST + 1, len(PLANNED_TOP1) - 1):
        assert any(not torch.equal(seen[later]['weights'][k], v) for k, v in seen[BEST]['weights'].items())
    assert [float(r['eval_top1']) for r in read_summary(output)] == PLANNED_TOP1
    assert f'done: best top-1 {PLANNED_TOP1[BEST]:.2f}% at epoch {BEST}' in (output / 'log.txt').read_text()


def test_test_py_on_the_best_file_gives_the_best_epochs_numbers(planned_run, tmp_path, capsys):
    code, _ = run(evaluate_main, ['--checkpoint', str(planned_run['output'] / 'model_best.pth.tar'),
                                  '--output', str(tmp_path)], capsys)
    assert code == 0
    results = json.loads((tmp_path / 'results.json').read_text())
    metrics = [s['metrics'] for s in planned_run['seen']]
    assert results['samples'] == metrics[BEST]['samples'] == 24
    assert results['loss'] == pytest.approx(metrics[BEST]['loss'], rel=1e-6)
    assert results['top1'] == pytest.approx(metrics[BEST]['top1'], abs=1e-9)
    # the losses tell the epochs apart, so the equality above names the epoch
    assert all(abs(metrics[e]['loss'] - metrics[BEST]['loss']) > 1e-5 for e in range(len(metrics)) if e != BEST)
