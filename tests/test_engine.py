"""The training engine end to end, on tiny synthetic data in the real formats (CIFAR pickles, an ImageFolder tree).

One module-scoped set of runs (tiny model, 16x16 images, T=1) serves several tests: 3 epochs straight, and 2 epochs
then a resume to 3, which must give the same weights.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import (CIFAR10_YML, IMAGENET_YML, REPO, SCHEDULE, TINY, TINY_MODEL, EventFrames, read_summary, refused,
                     run, write_cifar10)
from utils.config import load_config
from utils.data.loaders import build_loaders, digits, write_sample_files
from utils.errors import EXIT_BAD_INPUT
from utils.run import checkpoint as run_checkpoint
from utils.training.main import SUMMARY_COLUMNS, train_main
from utils.training.main import test_main as evaluate_main  # not named test_* (pytest would collect it)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp('engine')
    data = write_cifar10(root / 'cifar')
    base = ['--config', CIFAR10_YML, '--data-dir', str(data)] + TINY + SCHEDULE
    straight, split, before_resume = root / 'straight', root / 'split', root / 'before_resume'
    # a progress line every 2 of the 5 batches of an epoch (test_progress_lines_in_the_log)
    result = train_main(base + ['--epochs', '3', '--log-interval', '2', '--output', str(straight)])
    train_main(base + ['--epochs', '2', '--output', str(split)])
    shutil.copytree(split, before_resume)
    train_main(base + ['--epochs', '3', '--resume', str(split / 'last.pth.tar')])  # continues in its own folder
    return dict(data=data, base=base, straight=straight, split=split, before_resume=before_resume, result=result)


def test_run_folder(runs):
    out = runs['straight']
    assert {'args.yaml', 'summary.csv', 'last.pth.tar', 'model_best.pth.tar', 'log.txt'} <= set(os.listdir(out))
    assert not [p for p in os.listdir(out) if '.tmp' in p]
    rows = read_summary(out)
    assert list(rows[0]) == SUMMARY_COLUMNS and [int(r['epoch']) for r in rows] == [0, 1, 2]
    assert all(np.isfinite(float(r[c])) for r in rows for c in SUMMARY_COLUMNS)
    saved = load_config(['--config', str(out / 'args.yaml')])
    assert (saved.num_classes, saved.img_size, saved.data_dir, saved.epochs) == (10, 16, str(runs['data']), 3)
    last = torch.load(out / 'last.pth.tar', weights_only=True)
    assert {'state_dict', 'optimizer', 'epoch', 'arch', 'metric', 'args'} <= set(last)
    assert last['epoch'] == 2 and last['arch'] == 'spikingformer_cifar_4_384' and 'state_dict_ema' not in last
    best = max(range(3), key=lambda i: (float(rows[i]['eval_top1']), -i))
    assert torch.load(out / 'model_best.pth.tar', weights_only=True)['epoch'] == best
    assert runs['result']['best_epoch'] == best
    # the learning rate of each epoch: linear warmup from warmup_lr
    lrs = [float(r['lr']) for r in rows]
    assert np.allclose(lrs, [1e-5 + e * (5e-4 - 1e-5) / 5 for e in range(3)])


def test_progress_lines_in_the_log(runs):
    """Without a terminal the figures of issue 11 go to log.txt: every --log-interval batches (2 of 5 here) the time
    per batch, images/s and the ETA of the epoch and of the run; every epoch line ends with elapsed and remaining."""
    log = (runs['straight'] / 'log.txt').read_text().splitlines()
    time = r'\d+:\d\d:\d\d'
    progress = [line for line in log if re.fullmatch(
        rf'epoch \d \[\d/5\] loss \d+\.\d{{4}} lr \S+ \| \d+\.\d{{3}} s/batch, \d+\.\d img/s \| '
        rf'ETA epoch {time}, run {time}', line)]
    assert [line.split(' loss')[0] for line in progress] == [f'epoch {e} [{b}/5]' for e in range(3) for b in (2, 4)]
    epochs = [line for line in log if re.match(r'epoch \d: train loss', line)]
    assert len(epochs) == 3
    for line in epochs:
        assert re.search(rf' img/s \| .* \| {time} elapsed, {time} remaining$', line), line
    assert epochs[-1].endswith(', 0:00:00 remaining')


def test_resume_is_exact(runs):
    straight = torch.load(runs['straight'] / 'last.pth.tar', weights_only=True)
    resumed = torch.load(runs['split'] / 'last.pth.tar', weights_only=True)
    assert resumed['epoch'] == straight['epoch'] == 2
    for key, value in straight['state_dict'].items():
        torch.testing.assert_close(resumed['state_dict'][key], value, rtol=0, atol=1e-6, msg=key)
    assert read_summary(runs['split']) == read_summary(runs['straight'])


def test_test_py_reproduces_the_best_evaluation(runs, tmp_path, capsys):
    rows = read_summary(runs['straight'])
    best = torch.load(runs['straight'] / 'model_best.pth.tar', weights_only=True)
    row = rows[best['epoch']]
    # the checkpoint brings its config: nothing else is needed
    best_path = str(runs['straight'] / 'model_best.pth.tar')
    code, _ = run(evaluate_main, ['--checkpoint', best_path, '--output', str(tmp_path)], capsys)
    assert code == 0
    results = json.loads((tmp_path / 'results.json').read_text())
    assert results['samples'] == 40
    assert results['top1'] == pytest.approx(float(row['eval_top1']), abs=1e-9)
    assert results['top5'] == pytest.approx(float(row['eval_top5']), abs=1e-9)
    assert results['loss'] == pytest.approx(float(row['eval_loss']), rel=1e-6)
    assert results['checkpoint'].endswith('model_best.pth.tar')
    # the same with an explicit config and the model given on the command line
    explicit = ['--config', CIFAR10_YML, '--data-dir', str(runs['data'])] + TINY
    code, _ = run(evaluate_main, explicit + ['--output', str(tmp_path / 'b'), '--checkpoint', best_path], capsys)
    assert code == 0
    assert json.loads((tmp_path / 'b' / 'results.json').read_text())['top1'] == results['top1']
    # a checkpoint as the published scripts saved them: DDP's module. prefix, argparse args, no config of ours
    published = tmp_path / 'published.pth.tar'
    torch.save({'state_dict': {f'module.{k}': v for k, v in best['state_dict'].items()}, 'epoch': 7,
                'args': argparse.Namespace(model='Spikingformer')}, published)
    code, _ = run(evaluate_main, explicit + ['--output', str(tmp_path / 'c'), '--checkpoint', str(published)], capsys)
    assert code == 0
    assert json.loads((tmp_path / 'c' / 'results.json').read_text())['top1'] == results['top1']


def test_the_script_files(runs, tmp_path):
    best = runs['straight'] / 'model_best.pth.tar'
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, 'cifar10/test.py', '--checkpoint', str(best), '--output', str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert 'top-1' in proc.stdout and json.loads((tmp_path / 'results.json').read_text())['samples'] == 40
    proc = subprocess.run([sys.executable, 'imagenet/train.py', '--data-dir', str(tmp_path / 'no_imagenet')],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == EXIT_BAD_INPUT and 'Traceback' not in proc.stderr
    assert 'no_imagenet' in proc.stderr and 'train/ and val/' in proc.stderr


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(runs, tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / 'run'
    shutil.copytree(runs['before_resume'], run_dir)
    last = (run_dir / 'last.pth.tar').read_bytes()
    # a loss that diverges in the resumed epoch (a resume cannot change --lr, a recipe key)
    monkeypatch.setattr('utils.training.main.train_loss_fn',
                        lambda *_: lambda out, target: out.float().sum() * float('nan'))
    refused(capsys, train_main, runs['base'] + ['--epochs', '4', '--resume', str(run_dir / 'last.pth.tar')],
            'NaN', 'last.pth.tar', '--lr')
    assert (run_dir / 'last.pth.tar').read_bytes() == last
    assert len(read_summary(run_dir)) == 2


def test_bad_inputs_give_a_message_and_exit_2(runs, tmp_path, capsys):
    def check(main, argv, *words):
        refused(capsys, main, argv, *words)

    missing = str(tmp_path / 'nowhere')
    check(train_main, ['--config', CIFAR10_YML, '--data-dir', missing, '--output', str(tmp_path / 'run')] + TINY,
          missing, '--dataset-download')
    check(train_main, runs['base'] + ['--resume', str(tmp_path / 'gone' / 'last.pth.tar')], 'last.pth.tar', 'not found')
    assert not (tmp_path / 'run').exists() and not (tmp_path / 'gone').exists()  # no empty run folder left behind
    check(evaluate_main, ['--checkpoint', str(tmp_path / 'gone.pth.tar')], 'gone.pth.tar', 'not found')
    corrupt = tmp_path / 'corrupt.pth.tar'
    corrupt.write_bytes((runs['straight'] / 'last.pth.tar').read_bytes()[:5000])
    check(evaluate_main, ['--checkpoint', str(corrupt)], 'corrupt.pth.tar', 'corrupt')
    check(train_main, runs['base'] + ['--resume', str(corrupt)], 'corrupt.pth.tar')
    check(train_main, ['--config', str(tmp_path / 'none.yml')], 'none.yml', '--config')
    check(train_main, ['--config', CIFAR10_YML, '--batch-sise', '4'], '--batch-sise', '--batch-size')
    check(evaluate_main, ['--config', CIFAR10_YML], '--checkpoint')
    check(evaluate_main, ['--checkpoint', str(runs['straight'] / 'last.pth.tar'), '--embed-dims', '64'],
          'does not fit', 'embed_dims')
    check(evaluate_main, ['--checkpoint', str(runs['straight'] / 'last.pth.tar'), '--use-ema'], 'state_dict_ema')


def test_atomic_checkpoint_write(tmp_path, monkeypatch):
    path = tmp_path / 'last.pth.tar'
    run_checkpoint.atomic_save({'epoch': 1}, str(path))

    def crash(obj, f):
        with open(f, 'wb') as fh:
            fh.write(b'half a checkpoint')
        raise OSError('disk full')

    monkeypatch.setattr(torch, 'save', crash)
    with pytest.raises(OSError):
        run_checkpoint.atomic_save({'epoch': 2}, str(path))
    assert torch.load(path, weights_only=True) == {'epoch': 1}
    assert os.listdir(tmp_path) == ['last.pth.tar']


def test_ema_checkpoint_and_test_use_ema(runs, tmp_path, capsys):
    out = tmp_path / 'ema'
    train_main(runs['base'] + ['--epochs', '1', '--model-ema', '--limit-train-batches', '2', '--output', str(out)])
    last = torch.load(out / 'last.pth.tar', weights_only=True)
    assert set(last['state_dict_ema']) == set(last['state_dict'])
    assert list(read_summary(out)[0])[-3:] == ['ema_eval_loss', 'ema_eval_top1', 'ema_eval_top5']
    code, _ = run(evaluate_main, ['--checkpoint', str(out / 'last.pth.tar'), '--use-ema', '--output', str(tmp_path)],
                  capsys)
    assert code == 0
    ema = json.loads((tmp_path / 'results.json').read_text())
    assert ema['use_ema'] and ema['top1'] == pytest.approx(float(read_summary(out)[0]['ema_eval_top1']))


def test_imagenet_folder_tree(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (('train', 4), ('val', 2)):
        for cls in ('n01', 'n02'):
            (tmp_path / 'imagenet' / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(
                    tmp_path / 'imagenet' / split / cls / f'{i}.png')
    out = tmp_path / 'run'
    result = train_main(['--config', IMAGENET_YML, '--data-dir', str(tmp_path / 'imagenet'), '--num-classes', '2',
                         '--img-size', '32', '--batch-size', '4', '--val-batch-size', '4', '--epochs', '1',
                         '--cooldown-epochs', '0', '--output', str(out)] + TINY_MODEL +
                        ['-T', '1', '--workers', '0', '--amp', 'false'])
    assert result['best_epoch'] == 0 and read_summary(out)[0]['epoch'] == '0'
    assert load_config(['--config', str(out / 'args.yaml')]).aa == 'rand-m9-mstd0.5-inc1'


def test_randaugment_posterize_to_zero_bits():
    from timm.data import auto_augment
    image = Image.fromarray(np.full((4, 4, 3), 200, dtype=np.uint8))
    op = auto_augment.AugmentOp('PosterizeIncreasing', prob=1.0, magnitude=10)  # 4 - int(10 / 10 * 4) = 0 bits
    assert np.array_equal(np.asarray(op(image)), np.zeros((4, 4, 3), np.uint8))
    assert np.asarray(auto_augment.AugmentOp('PosterizeIncreasing', prob=1.0, magnitude=5)(image)).max() == 192


def test_digits_dataset_is_fixed():
    train, test = digits(True), digits(False)
    assert (len(train), len(test)) == (1437, 360)
    assert train.images.shape == (1437, 32, 32, 3) and train.images.dtype == np.uint8
    assert sorted(set(test.targets)) == list(range(10))
    assert np.array_equal(digits(False).images, test.images)


def test_event_data_get_plain_loaders_and_batch_mixup(tmp_path, monkeypatch):
    """DVS data sets come from utils.data.dvs_data already augmented: a plain loader of [T, 2, H, W] frames, timm's
    Mixup on the 5-D batch, and their file lists written into the run folder."""
    import utils.data.dvs_data
    monkeypatch.setattr(utils.data.dvs_data, 'build_dvs_datasets', lambda cfg: (EventFrames(8), EventFrames(3)),
                        raising=False)
    cfg = load_config(['--dataset', 'dvs128-gesture', '--batch-size', '4', '--workers', '0', '--mixup', '0.5',
                       '--mixup-prob', '1', '--output', str(tmp_path)])
    train_loader, eval_loader, mixup_fn = build_loaders(cfg)
    write_sample_files(str(tmp_path), train_loader.dataset, eval_loader.dataset.dataset)
    images, targets = next(iter(train_loader))
    mixed, soft = mixup_fn(images, targets)
    assert mixed.shape == (4, 2, 2, 32, 32) and soft.shape == (4, 11)
    assert sum(len(y) for _, y in eval_loader) == 3
    assert (tmp_path / 'train_files.txt').read_text().splitlines() == [f'sample{i}.npz' for i in range(8)]
    assert len((tmp_path / 'test_files.txt').read_text().splitlines()) == 3
    out = tmp_path / 'run'
    train_main(['--config', CIFAR10_YML, '--dataset', 'dvs128-gesture', '--model', 'spikingformer_dvs_2_256',
                '--num-classes', '11', '--cutmix', '0', '--epochs', '1', '--cooldown-epochs', '0', '--output', str(out),
                '-T', '2', '--batch-size', '4', '--val-batch-size', '4', '--workers', '0', '--amp', 'false']
               + TINY_MODEL)
    assert read_summary(out)[0]['epoch'] == '0' and (out / 'train_files.txt').is_file()


def test_amp_on_cpu_is_bfloat16(runs, tmp_path):
    """--amp-dtype auto on CPU; float16 on CPU (the CUDA path, with a gradient scaler) is tests/test_fp16.py."""
    out = tmp_path / 'bf16'
    result = train_main(runs['base'] + ['--epochs', '1', '--amp', '--limit-train-batches', '1', '--output', str(out)])
    assert result['best_epoch'] == 0 and 'amp bfloat16' in (out / 'log.txt').read_text()
    assert 'amp_scaler' not in torch.load(out / 'last.pth.tar', weights_only=True)
