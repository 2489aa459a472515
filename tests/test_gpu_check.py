"""The parts of scripts/gpu_check.sh that run anywhere: the backend comparison of models/backend_check.py on CPU with
its requirements, and the summary table of utils/gpu_report.py from a real pytest JUnit file."""
import json
import subprocess
import sys

import pytest
import torch

from models.backend_check import model_failure, model_rows, neuron_failure, neuron_rows
from utils.errors import UserError
from utils.gpu_report import junit_outcomes, main, summary

CPU = torch.device('cpu')


@pytest.mark.parametrize('dtype', ['float32', 'float16', 'bfloat16'])
def test_neuron_comparison_on_cpu(dtype):
    rows = neuron_rows(CPU, dtype, 1.5, 1.0, ['fused'], numel=1 << 12)
    assert [row['path'] for row in rows] == ['torch', 'fused']
    assert all(neuron_failure(row) is None for row in rows), rows
    assert rows[0]['grad_rel_err_vs_torch'] == 0 and 0.1 < rows[1]['firing_rate'] < 0.6


def test_requirements_catch_what_they_should():
    fused = dict(path='fused', dtype='float32', tau=1.5, device='cuda', numel=1000, spikes_differing_from_torch=0,
                 spikes_differing_from_true_division=0, grad_rel_err_vs_torch=1e-7, grad_rel_err_vs_float64=1e-7)
    assert neuron_failure(fused) is None
    assert 'true division' in neuron_failure(dict(fused, spikes_differing_from_true_division=1))
    assert '1e-4' in neuron_failure(dict(fused, grad_rel_err_vs_torch=1e-3))
    assert neuron_failure(dict(fused, grad_rel_err_vs_torch=1e-3, spikes_differing_from_torch=2)) is None
    assert '1e-2' in neuron_failure(dict(fused, dtype='float16', grad_rel_err_vs_float64=0.02))
    torch_row = dict(fused, path='torch', spikes_differing_from_true_division=3)
    assert neuron_failure(torch_row) is None  # CUDA's reciprocal for tau 1.5: reported only
    assert neuron_failure(dict(torch_row, tau=2.0)) and neuron_failure(dict(torch_row, device='cpu'))
    # CUDA's TorchScript fuser rounds a float16/bfloat16 charge once: reported only; on CPU each operation rounds
    assert neuron_failure(dict(torch_row, tau=2.0, dtype='float16')) is None
    assert neuron_failure(dict(torch_row, tau=2.0, dtype='bfloat16', device='cpu'))
    cupy = dict(fused, path='cupy', tau=2.0, spikes_differing_from_torch=1)
    assert 'float32 for tau 2' in neuron_failure(cupy)
    assert neuron_failure(dict(cupy, dtype='float16')) is None  # its half-precision kernel: reported
    assert '1 %' in neuron_failure(dict(cupy, dtype='float16', spikes_differing_from_torch=11))
    assert '1 %' in neuron_failure(dict(cupy, tau=1.5, grad_rel_err_vs_float64=float('nan')))
    model = dict(path='fused', amp='float16', finite=True, spikes_differing=0, logits_max_abs_diff=0.1,
                 grad_max_rel_err=5e-3)
    assert model_failure(model) is None
    assert 'spikes' in model_failure(dict(model, spikes_differing=1))
    assert 'gradients' in model_failure(dict(model, grad_max_rel_err=0.05))
    assert '1e-5' in model_failure(dict(model, amp='float32', grad_max_rel_err=0))
    assert model_failure(dict(model, path='cupy', spikes_differing=9)) is None  # fp16 kernel: reported
    assert 'finite' in model_failure(dict(model, path='cupy', finite=False))


def test_model_comparison_on_cpu(reference):
    rows = model_rows(reference, CPU, 'float32', ['fused'])
    assert [(row['path'], row['neurons'], row['spikes_differing']) for row in rows] == [('torch', 18, 0),
                                                                                       ('fused', 18, 0)]
    assert all(model_failure(row) is None and row['logits_max_abs_diff_vs_published'] < 1e-5 for row in rows)


SAMPLE_TESTS = '''
import pytest

def test_good():
    pass

def test_bad():
    assert 1 == 2

@pytest.mark.parametrize('x', [1])
def test_skipped(x):
    pytest.skip('needs 2 CUDA devices, found 1')

def test_stopped():  # as gpu_check.sh's time limit stops a test (its SIGTERM becomes Ctrl-C)
    raise KeyboardInterrupt
'''


def test_summary_table(tmp_path, capsys):
    (tmp_path / 'test_sample.py').write_text(SAMPLE_TESTS)
    out = tmp_path / 'out'
    out.mkdir()
    subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', str(tmp_path / 'test_sample.py'),
                    f'--junitxml={out / "gpu_tests.xml"}'], cwd=tmp_path, capture_output=True, timeout=120)
    outcomes = {c['name']: (c['outcome'], c['message']) for c in junit_outcomes(str(out / 'gpu_tests.xml'))}
    assert outcomes['test_good'] == ('passed', '') and outcomes['test_bad'][0] == 'failed'
    assert outcomes['test_skipped[1]'] == ('skipped', 'needs 2 CUDA devices, found 1')
    assert [name for name, (outcome, _) in outcomes.items() if outcome == 'stopped'] == [
        '(the test running when pytest was stopped, see pytest.txt)']
    layout = dict(layout='cifar', loss=2.3, steps=8, skipped=1, scale=32768.0)
    (out / 'gpu_tests.json').write_text(json.dumps(dict(device='cuda', rows={'test_good': [layout]})))
    bench = dict(config=dict(model='spikingformer_8_768', batch_size=16, device='cuda', amp='fp16'),
                 raw={'torch/train': [dict(times=[0.5, 0.5])], 'fused/train': [dict(times=[0.25, 0.25])]},
                 results=[dict(mode='train', path='torch', img_s=32.0, speedup=1.0, peak_mib=30000.0),
                          dict(mode='train', path='fused', img_s=64.0, speedup=2.0, peak_mib=15000.0),
                          dict(mode='train', path='fused+ckpt', img_s=48.0, speedup=1.5, peak_mib=9000.0,
                               step_mib=4000.0, ckpt_mem=0.4, ckpt_time=1.333)])
    (out / 'bench_8_768_fp16.json').write_text(json.dumps(bench))
    (out / 'bench_not_run.txt').write_text('4_384_fp16\n')
    (out / 'bench_failed.txt').write_text('8_768_fp32\n')
    text = summary(str(out), machine='test machine')
    lines = text.splitlines()
    assert lines[0] == '# gpu_check: tests on cuda' and '1 passed, 1 failed, 1 skipped, 1 stopped' in text
    assert '| test_good | passed |' in text and '| loss 2.3000, 7 of 8 steps taken, loss scale 32768 |' in text
    assert '| test_bad | failed: ' in text and '| test_skipped[1] | skipped: needs 2 CUDA devices, found 1 |' in text
    assert ('| benchmark spikingformer_8_768, batch 16, amp fp16: train, fused | measured | 2 | 64.0 img/s, 2.00x '
            'torch, peak GPU 15,000 MiB |') in text
    assert ('| benchmark spikingformer_8_768, batch 16, amp fp16: train, fused+ckpt | measured | 2 | 48.0 img/s, 1.50x '
            'torch, peak GPU 9,000 MiB, step 4,000 MiB, 0.40x the step memory at 1.33x the time without |') in text
    assert '| benchmark 4_384_fp16 | not run: out of time |' in text
    assert '| benchmark 8_768_fp32 | failed or stopped: see bench_8_768_fp32.log |' in text
    main([str(out)])
    assert (out / 'summary.md').read_text().splitlines()[4:] == lines[4:]  # (the machine line is this one's)
    assert 'wrote' in capsys.readouterr().out
    with pytest.raises(UserError, match='OUT_DIR'):
        main([str(tmp_path / 'missing')])
