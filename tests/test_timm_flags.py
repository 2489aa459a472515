"""The flags timm users type (issue 24): -b/-j, --experiment, --clip-grad/--clip-mode, --sync-bn, --checkpoint-hist,
--log-wandb, --channels-last, --torchcompile, and the timm flags that deliberately do not exist here."""
import os
import sys
import types

import pytest
import torch

from helpers import CIFAR10_YML, TINY, refused, write_cifar10
from utils.config import load_config
from utils.run.checkpoint_history import keep_history
from utils.run.run_folder import remove_temporaries
from utils.training import engine
from utils.training.engine import optimizer_step
from utils.training.main import train_main
from utils.training.timm_flags import prepare_model

SHORT = ['--epochs', '1', '--limit-train-batches', '2', '--limit-eval-batches', '1', '--cooldown-epochs', '0',
         '--warmup-epochs', '1']


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return str(write_cifar10(tmp_path_factory.mktemp('timm_flags') / 'cifar'))


def base(data):
    return ['--config', CIFAR10_YML, '--data-dir', data] + TINY + ['--seed', '3']


def weights(folder) -> dict:
    return torch.load(os.path.join(folder, 'last.pth.tar'), weights_only=True)['state_dict']


def test_short_forms_and_bare_torchcompile():
    cfg = load_config(['-b', '12', '-j', '3', '--torchcompile'])
    assert (cfg.batch_size, cfg.workers, cfg.torchcompile) == (12, 3, 'inductor')
    assert load_config(['--torchcompile', 'aot_eager']).torchcompile == 'aot_eager'


def test_absent_timm_flags_say_why_and_typos_get_a_suggestion(capsys):
    refused(capsys, train_main, ['--lr-base', '0.1'], '--lr-base', 'never scale the learning rate with the batch')
    refused(capsys, train_main, ['--batchsize', '8'], "did you mean '--batch-size'")


def test_experiment_names_the_run_folder(data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    result = train_main(base(data) + SHORT + ['--experiment', 'my-trial'])
    assert os.path.abspath(result['output']) == str(tmp_path / 'output' / 'train' / 'my-trial')
    assert (tmp_path / 'output' / 'train' / 'my-trial' / 'last.pth.tar').is_file()
    refused(capsys, train_main, base(data) + ['--experiment', 'x', '--output', str(tmp_path / 'y')], 'give one')
    refused(capsys, train_main, base(data) + ['--experiment', '../escape'], 'not a folder name')
    assert not (tmp_path / 'y').exists() and not (tmp_path / 'output' / 'escape').exists()


@pytest.mark.parametrize('scaled', [False, True])
def test_clipping_bounds_the_true_gradient_norm(scaled):
    """The step an SGD of lr 1 takes is the clipped gradient: its norm is clip_grad, also under a float16 scaler
    (whose scaled gradients must be unscaled before clipping, else the step would be 65536 times too small)."""
    weight = torch.nn.Parameter(torch.zeros(4))
    optimizer = torch.optim.SGD([weight], lr=1.0)
    scaler = torch.amp.GradScaler('cpu', init_scale=2.0 ** 16) if scaled else None
    loss = (weight * torch.tensor([30.0, 40.0, 0.0, 0.0])).sum()  # gradient (30, 40, 0, 0), norm 50
    (scaler.scale(loss) if scaled else loss).backward()
    assert optimizer_step(optimizer, scaler, clip_grad=5.0, clip_mode='norm', clip_parameters=[weight])
    torch.testing.assert_close(weight.detach(), torch.tensor([-3.0, -4.0, 0.0, 0.0]))


def test_clipping_happens_once_per_optimizer_step_with_accumulation(data, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(engine, 'dispatch_clip_grad', lambda params, value, mode: calls.append((value, mode)))
    train_main(base(data) + SHORT + ['--limit-train-batches', '4', '--grad-accum-steps', '2', '--clip-grad', '0.5',
                                     '--clip-mode', 'agc', '--output', str(tmp_path / 'run')])
    assert calls == [(0.5, 'agc')] * 2


def test_sync_bn_converts_only_a_distributed_model():
    cfg = load_config(TINY + ['--sync-bn'])
    from utils.training.factory import build_model
    model = build_model(cfg)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    same, notes = prepare_model(model, cfg, distributed=False)
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in same.modules()) and 'no effect' in notes[0]
    synced, _ = prepare_model(model, cfg, distributed=True)
    assert sum(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules()) > 0
    assert not any(type(m) in (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d) for m in synced.modules())
    for key, value in synced.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_checkpoint_hist_keeps_the_last_n_epochs(data, tmp_path):
    folder = tmp_path / 'run'
    folder.mkdir()
    (folder / 'checkpoint-notes.txt').write_text('mine')  # not a history file: never pruned (the folder is fresh
    os.remove(folder / 'checkpoint-notes.txt')            # for train_main; the pruning itself is tested below)
    train_main(base(data) + SHORT + ['--epochs', '4', '--warmup-epochs', '4', '--checkpoint-hist', '2',
                                     '--output', str(folder)])
    assert sorted(n for n in os.listdir(folder) if n.startswith('checkpoint-')) == \
        ['checkpoint-2.pth.tar', 'checkpoint-3.pth.tar']
    for epoch in (2, 3):
        assert torch.load(folder / f'checkpoint-{epoch}.pth.tar', weights_only=True)['epoch'] == epoch


def test_history_pruning_removes_only_old_history_files(tmp_path):
    torch.save({'epoch': 7}, tmp_path / 'last.pth.tar')
    for name in ('checkpoint-3.pth.tar', 'checkpoint-5.pth.tar', 'checkpoint-6.pth.tar', 'checkpoint-x.pth.tar',
                 'checkpoint-4.pth.tar.bak', 'my-checkpoint-1.pth.tar'):
        (tmp_path / name).write_text('x')
    assert keep_history(str(tmp_path), 7, 2) == [3, 5]
    assert sorted(os.listdir(tmp_path)) == ['checkpoint-4.pth.tar.bak', 'checkpoint-6.pth.tar', 'checkpoint-7.pth.tar',
                                            'checkpoint-x.pth.tar', 'last.pth.tar', 'my-checkpoint-1.pth.tar']
    assert torch.load(tmp_path / 'checkpoint-7.pth.tar', weights_only=True) == {'epoch': 7}
    (tmp_path / 'checkpoint-7.pth.tar.tmp123.tar').write_text('killed mid-write')
    assert remove_temporaries(str(tmp_path)) == ['checkpoint-7.pth.tar.tmp123.tar']
    assert keep_history(str(tmp_path), 8, 0) == [] and not (tmp_path / 'checkpoint-8.pth.tar').exists()


def test_log_wandb_needs_wandb_and_logs_each_epoch(data, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, 'wandb', None)  # not installed: import fails
    err = refused(capsys, train_main, base(data) + SHORT + ['--log-wandb', '--output', str(tmp_path / 'a')],
                  'pip install wandb')
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / 'a').exists()
    logged = []
    fake = types.SimpleNamespace(init=lambda **kw: types.SimpleNamespace(log=lambda v, step: logged.append((v, step))))
    monkeypatch.setitem(sys.modules, 'wandb', fake)
    train_main(base(data) + SHORT + ['--epochs', '2', '--log-wandb', '--output', str(tmp_path / 'b')])
    assert [step for _, step in logged] == [0, 1] and {'train_loss', 'eval_top1', 'lr'} <= set(logged[0][0])


# SGD, because Adam turns the rounding noise of a zero gradient (a bias before a BatchNorm) into a full step
SGD = SHORT + ['--opt', 'sgd', '--lr', '0.1', '--warmup-epochs', '0']


@pytest.fixture(scope='module')
def plain_run(data, tmp_path_factory):
    return train_main(base(data) + SGD + ['--output', str(tmp_path_factory.mktemp('plain') / 'run')])['output']


@pytest.mark.parametrize('flags', [['--channels-last'], ['--torchcompile', 'eager']])
def test_channels_last_and_compile_leave_the_numbers(data, plain_run, tmp_path, flags):
    """The opt-ins change the memory layout or the way the graph runs, not the numbers: the weights after two
    training steps equal the plain run's up to float rounding, under the same names."""
    opted = train_main(base(data) + SGD + flags + ['--output', str(tmp_path / 'opted')])['output']
    a, b = weights(plain_run), weights(opted)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key].contiguous(), a[key], rtol=1e-4, atol=1e-5, msg=key)


def test_unknown_compile_backend_is_refused_before_the_run(data, tmp_path, capsys):
    refused(capsys, train_main, base(data) + SHORT + ['--torchcompile', 'nonsense', '--output', str(tmp_path / 'r')],
            'nonsense', 'inductor')
