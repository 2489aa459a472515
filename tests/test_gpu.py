"""What only a GPU can show, marked ``gpu`` (tests/conftest.py skips them, saying why, where CUDA is absent):
SpikingJelly's CuPy kernel, the fused and the torch neuron paths on CUDA (spikes and gradients, float32, float16 and
bfloat16, tau 2 and 1.5; requirements in ``models.backend_check``), a float16 training step with the CUDA gradient
scaler for every tokenizer layout, a whole run on CUDA, two processes over NCCL, and the benchmark.

``bash scripts/gpu_check.sh`` runs these plus the benchmark's measurements and prints one summary table (the rows
these tests record go to ``$GPU_CHECK_OUT/gpu_tests.json``). ``GPU_CHECK_DEVICE=cpu`` runs them on CPU, small: a
dry run of the tests and of the script themselves (CuPy and the two-GPU case then skip).
"""
import json
import math
import os
import signal
import subprocess
import sys

import pytest
import torch

from helpers import CIFAR10_YML, IMAGENET_YML, REPO, TINY_MODEL, read_summary, two_process_training, write_cifar10
from models.backend_check import (CUPY_DTYPES, DTYPES, model_failure, model_rows, neuron_failure, neuron_rows,
                                  paths_on)
from models.neuron import cupy_available, resolve_backend
from utils.config import load_config
from utils.training.engine import train_loss_fn, train_one_epoch
from utils.training.factory import build_model
from utils.training.main import amp_setup, build_optimizer, train_main
from utils.training.main import test_main as evaluate_main  # not named test_* (pytest would collect it)

pytestmark = pytest.mark.gpu

if os.environ.get('GPU_CHECK_OUT'):
    # gpu_check.sh stops tests that run past its limit with SIGTERM: taken as Ctrl-C, so that pytest still writes the
    # results of those that finished (JUnit XML, and gpu_tests.json at the module's teardown) for the summary table
    signal.signal(signal.SIGTERM, signal.default_int_handler)

DEVICE = torch.device(os.environ.get('GPU_CHECK_DEVICE', 'cuda'))
DRY_RUN = DEVICE.type != 'cuda'
NEURON_INPUTS = 1 << 12 if DRY_RUN else 1 << 20  # per time step (4 steps)
# amp_dtype auto is float16 on CUDA; the CPU dry run asks for it
FLOAT16 = ['--amp', 'true'] + (['--amp-dtype', 'float16'] if DRY_RUN else [])
LAYOUT_CONFIGS = {'cifar': CIFAR10_YML, 'imagenet': IMAGENET_YML,
                  'dvs': str(REPO / 'dvs128-gesture' / 'dvs128gesture.yml')}


@pytest.fixture(scope='module')
def records():
    """Rows the tests record, by test name; written to ``$GPU_CHECK_OUT/gpu_tests.json`` (gpu_check.sh's table)."""
    rows = {}
    yield rows
    out = os.environ.get('GPU_CHECK_OUT')
    if out:
        with open(os.path.join(out, 'gpu_tests.json'), 'w') as f:
            json.dump(dict(device=str(DEVICE), rows=rows), f, indent=1)


@pytest.fixture
def record(records, request):
    def add(rows):
        records.setdefault(request.node.name, []).extend(rows)
    return add


def _skip_without_cupy(path):
    if path == 'cupy' and DRY_RUN:
        pytest.skip('the cupy path needs CUDA (CPU dry run)')
    if path == 'cupy' and not cupy_available():
        pytest.skip('CuPy is not importable here: the published kernel is not checked (pip install cupy-cuda12x)')


PATH_DTYPES = [(path, dtype) for path in ('fused', 'cupy') for dtype in DTYPES
               if path != 'cupy' or dtype in CUPY_DTYPES]  # SpikingJelly's CuPy LIF has no bfloat16 kernel


@pytest.mark.parametrize('tau', [2.0, 1.5])
@pytest.mark.parametrize('path,dtype', PATH_DTYPES)
def test_neuron_paths(record, path, dtype, tau):
    """Spikes and input gradients of one path and of the torch backend against each other, the true division by
    tau and a float64 backward, for thresholds 1 and 0.5."""
    _skip_without_cupy(path)
    rows = []
    for v_threshold in (1.0, 0.5):
        rows += neuron_rows(DEVICE, dtype, tau, v_threshold, [path], numel=NEURON_INPUTS)
    record(rows)
    assert all(0.1 < row['firing_rate'] < 0.6 for row in rows)  # the drive makes the neurons fire
    failures = [(row, neuron_failure(row)) for row in rows if neuron_failure(row)]
    assert not failures, failures


@pytest.mark.parametrize('dtype', list(DTYPES))
def test_auto_picks_the_published_kernel_where_it_runs(dtype):
    """'auto' runs CuPy on CUDA float32/float16 when CuPy imports (in training SpikingJelly's CuPy kernel; in eval
    SpikingJelly 0.0.0.0.14 runs its TorchScript path, docs/differences.md), else 'fused'."""
    x = torch.zeros(2, device=DEVICE, dtype=DTYPES[dtype])
    expected = 'cupy' if DEVICE.type == 'cuda' and cupy_available() and dtype in CUPY_DTYPES else 'fused'
    assert resolve_backend('auto', x) == expected
    if cupy_available() and expected == 'fused':
        with pytest.raises(RuntimeError, match='float32 or float16'):
            resolve_backend('cupy', x)


@pytest.mark.parametrize('path,amp', [(path, amp) for path, amp in PATH_DTYPES])
def test_model_paths(record, reference, path, amp):
    """The published CIFAR reference model in train mode, one backward, under each autocast, against the torch
    backend on the same device."""
    _skip_without_cupy(path)
    rows = model_rows(reference, DEVICE, amp, [path])
    record(rows)
    assert all(row['neurons'] == 2 * 7 + 4 for row in rows)
    failures = [(row, model_failure(row)) for row in rows if model_failure(row)]
    assert not failures, failures


@pytest.mark.parametrize('backend,amp', [('fused', None), ('fused', torch.float16), ('auto', torch.float16)])
def test_grad_checkpointing_equals_plain(record, backend, amp):
    """--grad-checkpointing on the device: one step of a small ImageNet-layout model (the recomputed full-resolution
    front of models.fire_recompute, cuDNN's BatchNorm backward) equals the plain step to relative 1e-6, BatchNorm
    statistics exactly; 'auto' takes CuPy where it imports, and with it the plain checkpointed segments."""
    import copy

    import timm
    _skip_without_cupy(backend)
    deterministic = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False  # the same kernels twice
    try:
        torch.manual_seed(0)
        plain = timm.create_model('spikingformer_8_384', backend=backend, embed_dims=32, num_heads=2, depths=2, T=2,
                                  img_size_h=64, img_size_w=64).to(DEVICE).train()
        checkpointed = copy.deepcopy(plain)
        checkpointed.set_grad_checkpointing(True)
        x, y = torch.randn(4, 3, 64, 64, device=DEVICE), torch.randint(0, 1000, (4,), device=DEVICE)
        logits = []
        for model in (plain, checkpointed):
            with torch.autocast(DEVICE.type, dtype=amp or torch.float32, enabled=amp is not None):
                out = model(x)
            torch.nn.functional.cross_entropy(out.float(), y).backward()
            logits.append(out.detach().float())
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = deterministic

    def rel(a, b):
        return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()
    grad_err = max(rel(c.grad, p.grad) for p, c in zip(plain.parameters(), checkpointed.parameters()))
    buffers_equal = all(torch.equal(a, b) for a, b in zip(plain.buffers(), checkpointed.buffers()))
    record([dict(backend=backend, amp=str(amp).replace('torch.', ''), logits_rel_err=rel(logits[1], logits[0]),
                 grad_max_rel_err=grad_err, batchnorm_statistics_equal=buffers_equal)])
    assert rel(logits[1], logits[0]) <= 1e-6 and grad_err <= 1e-6 and buffers_equal


@pytest.mark.parametrize('layout', list(LAYOUT_CONFIGS))
def test_float16_training_steps_per_layout(record, layout):
    """8 optimizer steps of a tiny model of each tokenizer layout under float16 autocast with the gradient scaler
    amp_setup builds for the device (neurons: 'auto', so CuPy where it imports)."""
    cfg = load_config(['--config', LAYOUT_CONFIGS[layout], '--num-classes', '10', '-T', '2', '--img-size', '32',
                       '--device', DEVICE.type] + TINY_MODEL + FLOAT16)
    torch.manual_seed(0)
    model = build_model(cfg).to(DEVICE)
    assert model.layout == layout
    amp_dtype, scaler = amp_setup(cfg, DEVICE)
    assert amp_dtype == torch.float16 and isinstance(scaler, torch.amp.GradScaler)
    shape = (4, 2, 2, 32, 32) if model.events else (4, 3, 32, 32)
    batches = [(torch.rand(shape).mul(4).floor() if model.events else torch.randn(shape), torch.randint(0, 10, (4,)))
               for _ in range(8)]
    before = [p.detach().clone() for p in model.parameters()]
    result = train_one_epoch(model, batches, build_optimizer(model, cfg), train_loss_fn(None, cfg.smoothing), DEVICE,
                             0, amp_dtype=amp_dtype, scaler=scaler, log=lambda line: None)
    record([dict(layout=layout, loss=result['loss'], steps=result['steps'], skipped=result['skipped_steps'],
                 scale=scaler.get_scale())])
    assert math.isfinite(result['loss']) and result['steps'] == 8 and result['skipped_steps'] < 8
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_a_run_end_to_end(record, tmp_path):
    """cifar10's train.py path on the device with AMP as configured (float16 and a scaler on CUDA), then test.py."""
    data = write_cifar10(tmp_path / 'cifar')
    out = tmp_path / 'run'
    train_main(['--config', CIFAR10_YML, '--data-dir', str(data), '--output', str(out), '--epochs', '2',
                '--warmup-epochs', '1', '--cooldown-epochs', '0', '-T', '2', '--img-size', '32', '--batch-size', '16',
                '--workers', '2', '--device', DEVICE.type] + TINY_MODEL + FLOAT16)
    log = (out / 'log.txt').read_text()
    assert f'on {DEVICE.type}' in log and 'amp float16, evaluation in float16' in log
    assert 'scale' in torch.load(out / 'last.pth.tar', weights_only=True)['amp_scaler']
    results = evaluate_main(['--checkpoint', str(out / 'last.pth.tar'), '--output', str(tmp_path / 'test'),
                             '--device', DEVICE.type])
    record([dict(train_loss=[round(float(r['train_loss']), 4) for r in read_summary(out)],
                 eval_top1=round(results['top1'], 2))])
    assert results['samples'] == 40


def test_two_processes_over_nccl(tmp_path):
    """torchrun, 2 GPUs, float16 with the scaler (made to skip steps): both ranks skip the same steps and keep
    identical weights. The gloo version of this test is tests/test_fp16.py."""
    if DRY_RUN:
        pytest.skip('NCCL needs CUDA (CPU dry run; the gloo version runs in tests/test_fp16.py)')
    if torch.cuda.device_count() < 2:
        pytest.skip(f'needs 2 CUDA devices, found {torch.cuda.device_count()}')
    data = write_cifar10(tmp_path / 'cifar', 16, test=40)
    out = tmp_path / 'run'
    run = two_process_training(tmp_path, ['--data-dir', str(data), '--output', str(out), '--epochs', '2',
                                          '--device', 'cuda', '--workers', '0', '-T', '1', '--img-size', '16',
                                          '--batch-size', '8', '--amp', 'true'] + TINY_MODEL)
    assert '2 process(es) on cuda' in run['stdout'] and 'amp float16' in run['stdout']
    skipped = [[epoch['skipped_steps'] for epoch in rank] for rank in run['epochs']]
    assert skipped[0] == skipped[1] and sum(skipped[0]) > 0, skipped
    for key, value in run['weights'][0].items():
        assert torch.equal(value, run['weights'][1][key]), key


def test_benchmark(record, tmp_path):
    """scripts/benchmark.py on the device under float16 autocast: every neuron path trains and infers, and the table
    and JSON say how fast (the measurements proper are gpu_check.sh's)."""
    small = ['--batch-size', '2', '--T', '1', '--img-size', '16'] if DRY_RUN else \
        ['--batch-size', '16', '--T', '4', '--img-size', '32']
    out = tmp_path / 'bench.json'
    proc = subprocess.run([sys.executable, 'scripts/benchmark.py', '--device', DEVICE.type, '--amp', 'fp16',
                           '--model', 'spikingformer_cifar_4_384', '--rounds', '1', '--warmup', '1', '--steps', '2',
                           '--json', str(out)] + small, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())['results']
    record(rows)
    paths = paths_on(DEVICE)
    assert sorted((row['mode'], row['path']) for row in rows) == sorted((m, p) for m in ('train', 'infer')
                                                                        for p in paths)
    assert all(row['img_s'] > 0 and row['peak_mib'] > 0 for row in rows)
    assert '| train | fused |' in proc.stdout and '| infer | torch |' in proc.stdout
