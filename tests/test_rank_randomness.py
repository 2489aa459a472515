"""Randomness per process, and the EMA under several processes, in two gloo processes launched by torchrun.

Every epoch reseeds from (seed, rank, epoch) (``utils.training.main.seed_everything``): different ranks must draw
different shuffles, augmentations and mixup draws, and a rank must draw the same ones again after a resume. The training
set holds one image, repeated with different labels, so that two augmented batches differ only by their random draws.

The spy (``WORKER``) runs cifar10/train.py's training in each process and records, per rank and epoch: the sampler's
indices, the first training batch as the loop receives it (RandAugment, flip, random erasing; mixed by the collate
function), the mixup draws of timm's ``FastCollateMixup``, and the weights of each evaluation (the model's, then
the EMA's). Rank 0 copies the run folder when epoch 1 begins, so that a second launch resumes from epoch 0.
"""
import os
import pickle
import subprocess

import numpy as np
import pytest
import torch

from helpers import CIFAR10_YML, LAUNCH_VARIABLES, REPO, TINY, launcher, on_a_free_port

WORKER = r"""
import os, shutil, sys
sys.path.insert(0, {repo!r})
import torch
from timm.data import FastCollateMixup
import utils.training.main as main
from utils.errors import run_cli

RANK, DUMP, COPY_TO = int(os.environ['RANK']), {dump!r}, os.environ.get('COPY_TO')
OUTPUT = sys.argv[sys.argv.index('--output') + 1] if '--output' in sys.argv else None
state = dict(epoch=None, lams=[], evaluations=0)
params_per_batch = FastCollateMixup._params_per_batch


def recorded_params(self):
    lam, use_cutmix = params_per_batch(self)
    state['lams'].append(float(lam))
    return lam, use_cutmix


class FirstBatch:
    def __init__(self, loader, record):
        self.loader, self.record = loader, record

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for i, (images, targets) in enumerate(self.loader):
            if i == 0:
                self.record.update(images=images.clone(), targets=targets.clone())
            yield images, targets


train_one_epoch, evaluate = main.train_one_epoch, main.evaluate


def train_spy(model, loader, *args, **kwargs):
    epoch = args[3]
    state.update(epoch=epoch, lams=[], evaluations=0)
    if epoch == 1 and RANK == 0 and COPY_TO:
        shutil.copytree(OUTPUT, COPY_TO)
    record = dict(indices=list(loader.sampler))
    result = train_one_epoch(model, FirstBatch(loader, record), *args, **kwargs)
    record['lams'] = list(state['lams'])
    torch.save(record, os.path.join(DUMP, 'draws_r%d_e%d.pt' % (RANK, epoch)))
    return result


def evaluate_spy(model, *args, **kwargs):
    torch.save(model.state_dict(), os.path.join(DUMP, 'eval_r%d_e%d_%d.pt' % (RANK, state['epoch'],
                                                                              state['evaluations'])))
    state['evaluations'] += 1
    return evaluate(model, *args, **kwargs)


FastCollateMixup._params_per_batch = recorded_params
main.train_one_epoch, main.evaluate = train_spy, evaluate_spy
run_cli(lambda argv: main.train_main(argv, {config!r}))
"""
EPOCHS = 2


def write_one_image_cifar10(root, per_batch=16, test=8):
    """CIFAR-10 pickles whose every image is the same random image (labels i % 10)."""
    image = np.random.default_rng(0).integers(0, 256, 3 * 32 * 32).astype(np.uint8)
    folder = root / 'cifar-10-batches-py'
    folder.mkdir(parents=True)
    for name, n in [(f'data_batch_{i}', per_batch) for i in range(1, 6)] + [('test_batch', test)]:
        (folder / name).write_bytes(pickle.dumps({'data': np.repeat(image[None], n, axis=0),
                                                  'labels': [i % 10 for i in range(n)]}))
    return root


def launch(root, name, argv, copy_to=None):
    """cifar10/train.py's training in two processes under the spy; returns the folder of its records."""
    dump = root / f'{name}_spy'
    dump.mkdir()
    worker = root / f'{name}_worker.py'
    worker.write_text(WORKER.format(repo=str(REPO), dump=str(dump), config=CIFAR10_YML))
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES}
    env.update(OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore', **({'COPY_TO': str(copy_to)} if copy_to else {}))

    def start(port):
        proc = subprocess.run(launcher('torchrun') + ['--nproc_per_node=2', f'--master_port={port}', str(worker)]
                              + list(argv), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        return [(proc.returncode, proc.stdout, proc.stderr)]

    [(code, stdout, stderr)] = on_a_free_port(start)
    assert code == 0, stdout[-3000:] + stderr[-3000:]
    return dump


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp('ranks')
    data = write_one_image_cifar10(root / 'cifar')
    straight, resumed = root / 'straight', root / 'resumed'
    argv = ['--data-dir', str(data), '--epochs', str(EPOCHS), '--warmup-epochs', '2', '--cooldown-epochs', '0',
            '--device', 'cpu', '--model-ema', '--model-ema-decay', '0.5', '--limit-train-batches', '2'] + TINY + \
        ['--batch-size', '8']
    straight_dump = launch(root, 'straight', argv + ['--output', str(straight)], copy_to=resumed)
    resumed_dump = launch(root, 'resumed', argv + ['--resume', str(resumed / 'last.pth.tar')])
    return dict(straight=straight, resumed=resumed, straight_dump=straight_dump, resumed_dump=resumed_dump)


def draws(dump, rank, epoch):
    return torch.load(dump / f'draws_r{rank}_e{epoch}.pt', weights_only=True)


@pytest.mark.parametrize('epoch', range(EPOCHS))
def test_ranks_draw_different_shuffles_augmentations_and_mixup(runs, epoch):
    zero, one = (draws(runs['straight_dump'], rank, epoch) for rank in (0, 1))
    assert len(zero['indices']) == len(one['indices']) == 40 and not set(zero['indices']) & set(one['indices'])
    assert len(zero['lams']) == len(one['lams']) >= 2  # the batches collated (the prefetcher reads ahead)
    assert zero['lams'] != one['lams']  # mixup draws
    # one image everywhere: the batches differ only through the random augmentation of each rank
    assert zero['images'].shape == one['images'].shape == (8, 3, 16, 16)
    different = [not torch.equal(zero['images'][i], one['images'][i]) for i in range(8)]
    assert sum(different) >= 4, different  # all 8 equal when the ranks share a stream


def test_a_rank_draws_anew_every_epoch(runs):
    for rank in (0, 1):
        first, second = (draws(runs['straight_dump'], rank, epoch) for epoch in (0, 1))
        assert first['indices'] != second['indices'] and first['lams'] != second['lams']
        assert not torch.equal(first['images'], second['images'])


@pytest.mark.parametrize('rank', [0, 1])
def test_a_resumed_rank_draws_what_it_drew_before(runs, rank):
    before, after = draws(runs['straight_dump'], rank, 1), draws(runs['resumed_dump'], rank, 1)
    assert after['indices'] == before['indices'] and after['lams'] == before['lams']
    assert torch.equal(after['images'], before['images']) and torch.equal(after['targets'], before['targets'])
    assert not (runs['resumed_dump'] / f'draws_r{rank}_e0.pt').exists()  # epoch 0 was not trained again


def test_the_ema_of_several_processes_is_the_same_and_saved(runs):
    """--model-ema under two processes: both ranks evaluate the same EMA weights, rank 0 saves them, they are not
    the model's (decay 0.5), and the resumed run's EMA ends where the uninterrupted one's does."""
    last = EPOCHS - 1
    for run, dump in (('straight', 'straight_dump'), ('resumed', 'resumed_dump')):
        model, ema = (torch.load(runs[dump] / f'eval_r0_e{last}_{k}.pt', weights_only=True) for k in (0, 1))
        ema_one = torch.load(runs[dump] / f'eval_r1_e{last}_1.pt', weights_only=True)
        saved = torch.load(runs[run] / 'last.pth.tar', weights_only=True)['state_dict_ema']
        for key, value in ema.items():
            assert torch.equal(value, ema_one[key]) and torch.equal(value, saved[key]), key
        assert any(not torch.equal(value, model[key]) for key, value in ema.items() if value.is_floating_point())
    straight, resumed = (torch.load(runs[run] / 'last.pth.tar', weights_only=True) for run in ('straight', 'resumed'))
    for key, value in straight['state_dict_ema'].items():
        torch.testing.assert_close(resumed['state_dict_ema'][key], value, rtol=0, atol=1e-6, msg=key)
