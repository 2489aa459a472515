"""scripts/benchmark.py on CPU: the allocated-bytes meter sees a known allocation and not what was held before it,
and ``--grad-checkpointing both`` reports both settings side by side with their ratios, ``--locate-peak`` where
the step memory peaked (the figures themselves are
measurements for docs/speed.md, not asserted here)."""
import importlib.util
import json
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO

spec = importlib.util.spec_from_file_location('benchmark', REPO / 'scripts' / 'benchmark.py')
benchmark = importlib.util.module_from_spec(spec)
spec.loader.exec_module(benchmark)


def test_allocated_meter_counts_what_is_allocated_after_its_start_only():
    held = torch.ones(16 * 2 ** 20 // 4)  # 16 MiB held before: between-steps state, not step memory
    meter = benchmark._MallocInUse()
    if not meter.available:
        pytest.skip('this libc has no mallinfo2 (not glibc)')
    step = torch.ones(64 * 2 ** 20 // 4)  # 64 MiB allocated during the "step"
    time.sleep(0.05)
    del step
    mib = meter.stop()
    assert 60 <= mib < 72
    assert held.sum() > 0


def test_side_by_side_report(tmp_path):
    out = tmp_path / 'b.json'
    proc = subprocess.run([sys.executable, 'scripts/benchmark.py', '--model', 'spikingformer_cifar_4_256',
                           '--batch-size', '2', '--T', '1', '--img-size', '16', '--paths', 'fused', '--modes', 'train',
                           '--grad-checkpointing', 'both', '--rounds', '1', '--warmup', '1', '--steps', '1',
                           '--threads', '1', '--locate-peak', '--json', str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {row['path']: row for row in json.loads(out.read_text())['results']}
    assert set(rows) == {'fused', 'fused+ckpt'}
    plain, ckpt = rows['fused'], rows['fused+ckpt']
    for row in (plain, ckpt):
        assert row['step_mib'] > 0 and row['rss_step_mib'] > 0
    assert ckpt['ckpt_mem'] == pytest.approx(ckpt['step_mib'] / plain['step_mib'])
    assert ckpt['ckpt_time'] == pytest.approx(ckpt['step_ms'] / plain['step_ms'])
    assert '| train | fused+ckpt |' in proc.stdout and 'time vs no ckpt' in proc.stdout
    where = json.loads(out.read_text())['raw']['fused+ckpt/train'][0]['peak_where']
    assert where and all(label.split()[0] in ('forward', 'backward') for label, _ in where)
    assert max(mib for _, mib in where) <= ckpt['step_mib'] + 1  # each is a sample of the same step memory
    assert 'train fused+ckpt, step memory while each module ran' in proc.stdout


@pytest.mark.parametrize('argv, says', [(['--fit-batch-sizes', '1,2', '--warmup', '0'], '--warmup 1 or more'),
                                        (['--fit-batch-sizes', '2,2'], 'two different batch sizes'),
                                        (['--fit-batch-sizes', 'a,b'], 'two different batch sizes')])
def test_a_fit_that_cannot_measure_is_refused(argv, says):
    proc = subprocess.run([sys.executable, 'scripts/benchmark.py', '--model', 'spikingformer_cifar_4_256', *argv],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and says in proc.stderr and 'Traceback' not in proc.stderr


def test_results_already_saved_are_never_overwritten(tmp_path):
    """An existing --json is refused before anything is measured; one that appears while measuring (another run) is
    left as it is, and a failed write leaves no half file."""
    saved = tmp_path / 'earlier.json'
    saved.write_text('{"kept": true}')
    proc = subprocess.run([sys.executable, 'scripts/benchmark.py', '--json', str(saved)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and 'exists' in proc.stderr and 'Traceback' not in proc.stderr
    from utils.errors import UserError
    with pytest.raises(UserError, match='appeared while measuring'):
        benchmark.save_json(str(saved), {'new': 1})
    assert saved.read_text() == '{"kept": true}'
    with pytest.raises(TypeError):
        benchmark.save_json(str(tmp_path / 'half.json'), {'not json': object()})
    assert not (tmp_path / 'half.json').exists()
    benchmark.save_json(str(tmp_path / 'new.json'), {'new': 1})
    assert json.loads((tmp_path / 'new.json').read_text()) == {'new': 1}
