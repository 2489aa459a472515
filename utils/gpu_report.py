"""The one summary table of ``scripts/gpu_check.sh``: every gpu-marked test's outcome (pytest's JUnit XML), the
numbers the tests recorded (``gpu_tests.json``, see tests/test_gpu.py) and the benchmark's measurements
(``bench_*.json`` of scripts/benchmark.py), printed and written to ``summary.md`` in the same folder.

    python -m utils.gpu_report OUT_DIR
"""
import glob
import json
import os
import platform
import sys
import xml.etree.ElementTree as ElementTree
from typing import Optional, Sequence


def junit_outcomes(junit_path: str) -> list:
    """``[dict(name, outcome, seconds, message)]`` per test case of a pytest JUnit XML file; outcome is 'passed',
    'failed' (failures and errors), 'skipped' (message: the reason) or 'stopped': pytest stopped by Ctrl-C (as
    gpu_check.sh's time limit stops it) writes the test it was running as a case without a name."""
    cases = []
    for case in ElementTree.parse(junit_path).getroot().iter('testcase'):
        if case.get('name') is None:
            cases.append(dict(name='(the test running when pytest was stopped, see pytest.txt)', outcome='stopped',
                              seconds=float(case.get('time') or 0), message='at the time limit, or interrupted'))
            continue
        outcome, message = 'passed', ''
        for tag, name in (('failure', 'failed'), ('error', 'failed'), ('skipped', 'skipped')):
            found = case.find(tag)
            if found is not None:
                outcome, message = name, (found.get('message') or '').strip()
                break
        if message.startswith('Skipped: '):
            message = message[len('Skipped: '):]
        cases.append(dict(name=case.get('name'), outcome=outcome, seconds=float(case.get('time') or 0),
                          message=message.splitlines()[0][:200] if message else ''))
    return cases


def _g(value: float) -> str:
    return f'{value:.1e}' if value else '0'


def describe(rows: Sequence[dict]) -> str:
    """A short text of the rows one test recorded (neuron, model, training or benchmark rows)."""
    if not rows:
        return ''
    parts = []
    if 'spikes_differing_from_true_division' in rows[0]:
        for path in dict.fromkeys(row['path'] for row in rows):
            mine = [row for row in rows if row['path'] == path]
            parts.append(f"{path}: spikes != torch {sum(r['spikes_differing_from_torch'] for r in mine)}, "
                         f"!= true division {sum(r['spikes_differing_from_true_division'] for r in mine)} "
                         f"(of {sum(r['numel'] for r in mine):,}); grad err vs torch "
                         f"{_g(max(r['grad_rel_err_vs_torch'] for r in mine))}, vs float64 "
                         f"{_g(max(r['grad_rel_err_vs_float64'] for r in mine))}")
    elif 'neurons_with_differing_spikes' in rows[0]:
        for row in rows:
            parts.append(f"{row['path']}: {row['spikes_differing']} spikes differ "
                         f"({row['neurons_with_differing_spikes']} of {row['neurons']} neurons), logits "
                         f"{_g(row['logits_max_abs_diff'])}, grad err {_g(row['grad_max_rel_err'])}")
    elif 'layout' in rows[0]:
        for row in rows:
            parts.append(f"loss {row['loss']:.4f}, {row['steps'] - row['skipped']} of {row['steps']} steps taken, "
                         f"loss scale {row['scale']:g}")
    elif 'img_s' in rows[0]:
        for row in rows:
            parts.append(f"{row['mode']} {row['path']} {row['img_s']:.1f} img/s")
    else:
        parts = [', '.join(f'{k} {v}' for k, v in row.items()) for row in rows]
    return '; '.join(parts)


def benchmark_rows(out_dir: str) -> list:
    """Table rows ``(check, result, seconds, numbers)`` of every ``bench_*.json`` in ``out_dir``, of the benchmarks
    that failed or ran out of time (``bench_failed.txt``; their log is ``bench_NAME.log``) and of those gpu_check.sh
    left out for lack of time (``bench_not_run.txt``)."""
    rows = []
    for path in sorted(glob.glob(os.path.join(out_dir, 'bench_*.json'))):
        with open(path) as f:
            bench = json.load(f)
        config, memory = bench['config'], 'GPU' if bench['config']['device'].startswith('cuda') else 'RSS'
        seconds = sum(t for runs in bench['raw'].values() for run in runs for t in run['times'])
        for row in bench['results']:
            speed = f", {row['speedup']:.2f}x torch" if row.get('speedup') else ''
            ckpt = ''
            if row.get('ckpt_mem') and row.get('ckpt_time'):  # --grad-checkpointing both: against the same path without
                ckpt = f", {row['ckpt_mem']:.2f}x the step memory at {row['ckpt_time']:.2f}x the time without"
            step = f", step {row['step_mib']:,.0f} MiB" if row.get('step_mib') else ''
            rows.append((f"benchmark {config['model']}, batch {config['batch_size']}, amp {config['amp']}: "
                         f"{row['mode']}, {row['path']}", 'measured', f'{seconds:.0f}',
                         f"{row['img_s']:.1f} img/s{speed}, peak {memory} {row['peak_mib']:,.0f} MiB{step}{ckpt}"))
    for listing, result in (('bench_failed.txt', 'failed or stopped: see bench_{}.log'),
                            ('bench_not_run.txt', 'not run: out of time')):
        path = os.path.join(out_dir, listing)
        if os.path.isfile(path):
            with open(path) as f:
                rows += [(f'benchmark {name}', result.format(name), '', '') for name in f.read().split()]
    return rows


def machine_line() -> str:
    import torch
    line = f'torch {torch.__version__}, Python {platform.python_version()}'
    if torch.cuda.is_available():
        line += f', {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}'
    else:
        line += ', no CUDA device'
    try:
        import cupy
        line += f', CuPy {cupy.__version__}'
    except Exception:  # not installed, or built for another CUDA
        line += ', CuPy not importable'
    return line


def summary(out_dir: str, machine: Optional[str] = None) -> str:
    """The Markdown summary of ``out_dir`` (``gpu_tests.xml``, ``gpu_tests.json``, ``bench_*.json``)."""
    junit = os.path.join(out_dir, 'gpu_tests.xml')
    cases = junit_outcomes(junit) if os.path.isfile(junit) else []
    recorded, device = {}, '?'
    if os.path.isfile(os.path.join(out_dir, 'gpu_tests.json')):
        with open(os.path.join(out_dir, 'gpu_tests.json')) as f:
            data = json.load(f)
        recorded, device = data['rows'], data['device']
    counts = {k: sum(c['outcome'] == k for c in cases) for k in ('passed', 'failed', 'skipped', 'stopped')}
    lines = [f'# gpu_check: tests on {device}', '', machine or machine_line(), '',
             f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped"
             + (f", {counts['stopped']} stopped" if counts['stopped'] else '')
             + ('' if cases else ' (no test results: pytest did not write gpu_tests.xml)'), '',
             '| check | result | seconds | numbers |', '|---|---|---:|---|']
    for case in cases:
        result = case['outcome'] + (f": {case['message']}" if case['message'] else '')
        lines.append(f"| {case['name']} | {result.replace('|', '/')} | {case['seconds']:.1f} | "
                     f"{describe(recorded.get(case['name'], []))} |")
    for check, result, seconds, numbers in benchmark_rows(out_dir):
        lines.append(f'| {check} | {result} | {seconds} | {numbers} |')
    return '\n'.join(lines) + '\n'


def main(argv: Optional[Sequence[str]] = None) -> None:
    from utils.run.atomic import replace_atomically
    from utils.errors import UserError
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1 or not os.path.isdir(argv[0]):
        raise UserError(f'usage: python -m utils.gpu_report OUT_DIR (the folder scripts/gpu_check.sh wrote); got '
                        f'{" ".join(argv) or "no argument"}.')
    text = summary(argv[0])
    print(text, end='')
    path = os.path.join(argv[0], 'summary.md')

    def write(tmp):
        with open(tmp, 'w') as f:
            f.write(text)
    replace_atomically(path, write)
    print(f'wrote {path}')


if __name__ == '__main__':
    from utils.errors import run_cli
    run_cli(main)
