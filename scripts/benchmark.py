"""Training and inference throughput and peak memory of a Spikingformer variant, per neuron backend.

For one variant, batch size, device and number of time steps, measures for each available neuron path
('torch' = SpikingJelly's plain PyTorch backend, the baseline; 'cupy' = SpikingJelly's CuPy kernel where it runs;
'fused' = models/fused_lif.py, what 'auto' picks on CPU):

* training step: zero_grad, forward, cross-entropy, backward, AdamW step (images/s, median over steps);
* inference: ``eval()`` forward under ``torch.inference_mode`` (images/s, median over steps);
* step memory ("step MiB"), the same on every device: the peak of the bytes allocated during the timed steps minus
  the bytes allocated between two steps (after the warm-up steps and ``zero_grad(set_to_none=True)``: the weights,
  buffers, the input batch and the optimizer state), i.e. what a training step adds to what a run holds anyway:
  activations, gradients, temporaries. On CUDA ``torch.cuda.max_memory_allocated`` against
  ``torch.cuda.memory_allocated``; on CPU glibc's in-use bytes, sampled (:class:`_MallocInUse`). This is the figure
  ``--grad-checkpointing both`` compares; it needs ``--warmup`` of at least 1 in training (AdamW creates its state in
  its first step).
* peak memory: on CUDA ``torch.cuda.max_memory_allocated``; on CPU the peak resident set (``ru_maxrss``), and, as
  "RSS step MiB", that peak minus the resident set just before the first step (the optimizer state included). The
  resident set also counts freed memory that glibc keeps for reuse, which is why the step memory is measured as
  allocated bytes.

A path may carry the opt-ins of train.py (``--channels-last``, ``--torchcompile``): ``fused+channels_last``,
``fused+compile`` (inductor) or ``fused+compile=aot_eager``, e.g. ``--paths fused,fused+channels_last,fused+compile``
compares them on one neuron path. The speed-up column is relative to 'torch', or to the first path without it.

Every (path, mode) is measured in a fresh child process (so peak memory is that path's alone and no allocator state
or warm cache carries over), after ``--warmup`` untimed steps, and the paths are interleaved over ``--rounds`` rounds
(A B A B ...) so that a machine whose speed drifts (shared CPUs) affects every path alike; the reported figure is the
median of all timed steps of all rounds. Prints a markdown table with the speed-up over the 'torch' backend and
writes every raw timing to JSON (``--json``: a new file; an existing one is refused before anything is measured).

``--grad-checkpointing both`` measures every path without and with activation checkpointing
(``model.set_grad_checkpointing``) side by side, and adds each row's step time and step memory relative to the same
path without it (docs/speed.md). ``--fit-batch-sizes 1,2`` (training only) measures at two batch sizes and prints the
straight line ``step memory = a + b * batch`` through them, the model ``utils.training.memory_estimate`` stores per
variant.

    python scripts/benchmark.py --model spikingformer_cifar_4_384 --batch-size 16 --T 4 --device cpu
    python scripts/benchmark.py --model spikingformer_8_768 --batch-size 32 --device cuda --amp bf16
"""
import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]


def _rss_bytes() -> int:
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


class _MallocInUse:
    """Peak of the bytes glibc's malloc has handed out and not taken back (``mallinfo2``: heap chunks in use plus
    mmapped chunks), sampled every 2 ms in a thread, since :meth:`restart`; ``available`` is False where libc has no
    ``mallinfo2``.

    Why not the resident set: glibc keeps freed heap memory resident for reuse, so after a few steps the peak RSS of a
    checkpointed step sits some 400-600 MiB above the memory its tensors actually occupied at once (8-768, batch 2:
    docs/speed.md), and the resident set between two steps still holds the freed activations of the step before.
    In-use bytes are those tensors (and oneDNN's scratch buffers): what a caching allocator that returns memory, or a
    GPU, would have to hold. Sampling can miss a peak shorter than 2 ms; the tensors of a step live far longer."""

    def __init__(self):
        import ctypes
        import threading
        self.available, self.label, self.by_label = False, None, {}
        try:
            libc = ctypes.CDLL('libc.so.6')
            fields = ('arena', 'ordblks', 'smblks', 'hblks', 'hblkhd', 'usmblks', 'fsmblks', 'uordblks', 'fordblks',
                      'keepcost')
            info = type('mallinfo2', (ctypes.Structure,), {'_fields_': [(f, ctypes.c_size_t) for f in fields]})
            libc.mallinfo2.restype = info
        except (OSError, AttributeError):
            return
        self.available = True
        self._libc, self._stop = libc, threading.Event()
        self.restart()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _read(self) -> int:
        m = self._libc.mallinfo2()
        return m.uordblks + m.hblkhd

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            now = self._read()
            self.peak = max(self.peak, now)
            if self.label is not None:
                where = self.label[0]
                self.by_label[where] = max(self.by_label.get(where, 0), now)

    def restart(self) -> None:
        """From now on: the base is the bytes in use now, the peak starts there."""
        self.base = self.peak = self._read()
        self.by_label = {}

    def locate(self, model) -> None:
        """Record, per module at most three levels deep, the peak while its forward or backward was the last to start
        (forward and backward pre-hooks; :meth:`where` reports them)."""
        self.label = ['before the first module']
        for name, module in model.named_modules():
            if name and name.count('.') <= 3:
                module.register_forward_pre_hook(lambda m, i, n=name: self.label.__setitem__(0, 'forward ' + n))
                module.register_full_backward_pre_hook(
                    lambda m, g, n=name: self.label.__setitem__(0, 'backward ' + n))

    def where(self, top: int = 5) -> list:
        """The ``top`` modules with the highest step memory while they ran: [(label, MiB above the base)]."""
        ranked = sorted(self.by_label.items(), key=lambda kv: -kv[1])[:top]
        return [(label, (value - self.base) / 2 ** 20) for label, value in ranked]

    def stop(self) -> Optional[float]:
        """Peak minus the base, in MiB (None without mallinfo2)."""
        if not self.available:
            return None
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._read())
        return (self.peak - self.base) / 2 ** 20


def worker(args) -> dict:
    """Measure one (path, mode) in this process; returns a JSON-able dict."""
    sys.path.insert(0, str(REPO))
    import timm
    import torch

    import models  # noqa: F401  (registers the variants)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    backend, *options = args.path.split('+')
    options = dict(o.split('=', 1) if '=' in o else (o, None) for o in options)
    unknown = set(options) - {'channels_last', 'compile'}
    if unknown:
        raise SystemExit(f'unknown path option(s) {", ".join(sorted(unknown))}: use +channels_last, +compile[=backend]')
    kwargs = dict(backend=backend)
    if args.T:
        kwargs['T'] = args.T
    model = timm.create_model(args.model, **kwargs).to(device)
    if args.checkpointing:
        model.set_grad_checkpointing(True)
    channels_last = 'channels_last' in options
    size = args.img_size or model.img_size[0]
    if model.events:
        x = torch.rand(args.batch_size, model.T, model.in_channels, size, size, device=device).mul(4).floor()
    else:
        x = torch.randn(args.batch_size, model.in_channels, size, size, device=device)
    y = torch.randint(0, model.num_classes, (args.batch_size,), device=device)
    if channels_last:  # as train.py --channels-last: the model's weights and the image batches
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
    params = list(model.parameters())
    if 'compile' in options:  # as train.py --torchcompile: the first (untimed) steps compile
        model = torch.compile(model, backend=options['compile'] or 'inductor')
    amp = {'none': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}[args.amp]
    scaler = torch.amp.GradScaler(device.type, enabled=amp is torch.float16)

    def autocast():
        return torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None)

    def sync():
        if device.type == 'cuda':
            torch.cuda.synchronize()

    if args.mode == 'train':
        model.train()
        opt = torch.optim.AdamW(params, lr=1e-6)

        def step():
            opt.zero_grad(set_to_none=True)
            with autocast():
                loss = torch.nn.functional.cross_entropy(model(x), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
    else:
        model.eval()

        def step():
            with torch.inference_mode(), autocast():
                model(x)

    rss_before = _rss_bytes()
    for _ in range(args.warmup):
        step()
    sync()
    if args.mode == 'train':
        opt.zero_grad(set_to_none=True)  # between two steps a run holds no gradients (timm's loop, the engine's)
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
        base_cuda = torch.cuda.memory_allocated(device)
    in_use = _MallocInUse() if device.type == 'cpu' else None
    if args.locate_peak and in_use is not None and in_use.available:
        in_use.locate(model)
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    out = dict(path=args.path, mode=args.mode, times=times, threads=torch.get_num_threads(),
               checkpointing=bool(args.checkpointing), batch_size=args.batch_size, warmup=args.warmup)
    if device.type == 'cuda':
        out['peak_mib'] = torch.cuda.max_memory_allocated(device) / 2 ** 20
        out['step_mib'] = (torch.cuda.max_memory_allocated(device) - base_cuda) / 2 ** 20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux
        out['peak_mib'] = peak / 2 ** 20
        out['rss_step_mib'] = (peak - rss_before) / 2 ** 20
        out['step_mib'] = in_use.stop()
        if out['step_mib'] is None:  # no mallinfo2 (not glibc): the resident figure is all there is
            out['step_mib'] = out['rss_step_mib']
        elif args.locate_peak:
            out['peak_where'] = in_use.where()
    return out


def available_paths(device: str) -> list:
    sys.path.insert(0, str(REPO))
    from models.neuron import cupy_available
    paths = ['torch']
    if device.startswith('cuda') and cupy_available():
        paths.append('cupy')
    return paths + ['fused']


def machine(device: str) -> dict:
    import torch
    info = dict(python=platform.python_version(), torch=torch.__version__, os=platform.platform(),
                cpu=platform.processor() or platform.machine(), cpu_count=os.cpu_count(),
                torch_threads=torch.get_num_threads())
    try:
        with open('/proc/cpuinfo') as f:
            names = [line.split(':', 1)[1].strip() for line in f if line.startswith('model name')]
        if names:
            info['cpu'] = names[0]
    except OSError:
        pass
    if device.startswith('cuda') and torch.cuda.is_available():
        info['gpu'] = torch.cuda.get_device_name(0)
        info['cuda'] = torch.version.cuda
    return info


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', default='spikingformer_cifar_4_384', help='registered variant name')
    p.add_argument('--batch-size', type=int, default=16)
    p.add_argument('--T', type=int, default=None, help='time steps (default: the variant\'s)')
    p.add_argument('--img-size', type=int, default=None, help='input side (default: the variant\'s)')
    p.add_argument('--device', default='cpu')
    p.add_argument('--amp', choices=('none', 'bf16', 'fp16'), default='none', help='autocast dtype')
    p.add_argument('--paths', default=None, help='comma-separated neuron paths (default: every available one)')
    p.add_argument('--modes', default='train,infer')
    p.add_argument('--warmup', type=int, default=2, help='untimed steps per measurement')
    p.add_argument('--steps', type=int, default=5, help='timed steps per measurement')
    p.add_argument('--rounds', type=int, default=3, help='interleaved rounds over the paths')
    p.add_argument('--threads', type=int, default=0, help='torch threads (default: torch\'s choice)')
    p.add_argument('--json', default=None, help='where to write the results (default: print only)')
    p.add_argument('--grad-checkpointing', choices=('off', 'on', 'both'), default='off',
                   help='activation checkpointing of the model; both = each path without and with, side by side')
    p.add_argument('--locate-peak', action='store_true',
                   help='CPU: also report during which module\'s forward or backward the step memory peaked')
    p.add_argument('--fit-batch-sizes', default=None,
                   help='two training batch sizes, e.g. 1,2: fit step memory = a + b * batch through them')
    p.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--path', help=argparse.SUPPRESS)
    p.add_argument('--mode', help=argparse.SUPPRESS)
    p.add_argument('--checkpointing', action='store_true', help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        print('RESULT ' + json.dumps(worker(args)), flush=True)
        return

    if args.json:
        check_json_path(args.json)
    if args.fit_batch_sizes:
        return fit_memory(args)
    paths = args.paths.split(',') if args.paths else available_paths(args.device)
    modes = args.modes.split(',')
    checkpointing = {'off': [False], 'on': [True], 'both': [False, True]}[args.grad_checkpointing]
    runs = measure(args, [(p, c) for p in paths for c in checkpointing], modes, args.batch_size)
    report(args, runs, modes, checkpointing)


def check_json_path(path: str) -> None:
    """Before measuring: ``--json`` must name a new file in an existing folder (results already saved are never
    overwritten, and a wrong path is found before minutes of measuring, not after)."""
    from utils.errors import UserError
    if os.path.lexists(path):
        raise UserError(f'--json {path} exists: pass a new file name (earlier results are not overwritten)')
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UserError(f'--json {path}: the folder {folder} does not exist')


def save_json(path: str, data: dict) -> None:
    """Write ``data`` to the new file ``path``, created exclusively (a file another run created meanwhile, or a link
    put there, is left as it is), completely or not at all (a failed write removes it)."""
    from utils.errors import UserError
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        raise UserError(f'--json {path} appeared while measuring (another run?); it was left as it is and these '
                        f'results, printed above, were not saved') from None
    try:
        with os.fdopen(fd, 'w') as f:
            json.dump(data, f, indent=1)
    except BaseException:
        os.remove(path)
        raise


def setup_name(path: str, checkpointing: bool) -> str:
    return path + ('+ckpt' if checkpointing else '')


def measure(args, setups, modes, batch_size: int) -> dict:
    """``{(setup name, mode): [worker results]}``, each (setup, mode) in a fresh process, interleaved over rounds."""
    forwarded = ['--model', args.model, '--batch-size', str(batch_size), '--device', args.device,
                 '--amp', args.amp, '--warmup', str(args.warmup), '--steps', str(args.steps),
                 '--threads', str(args.threads)]
    if args.T:
        forwarded += ['--T', str(args.T)]
    if args.img_size:
        forwarded += ['--img-size', str(args.img_size)]
    if args.locate_peak:
        forwarded += ['--locate-peak']
    runs = {(setup_name(*setup), mode): [] for mode in modes for setup in setups}
    for r in range(args.rounds):
        for mode in modes:
            for path, ckpt in setups:
                name = setup_name(path, ckpt)
                cmd = [sys.executable, str(Path(__file__).resolve()), '--worker', '--path', path, '--mode', mode]
                proc = subprocess.run(cmd + forwarded + (['--checkpointing'] if ckpt else []), capture_output=True,
                                      text=True, cwd=REPO)
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith('RESULT ')]
                if proc.returncode or not lines:
                    sys.exit(f'worker {name}/{mode} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}')
                res = json.loads(lines[-1][len('RESULT '):])
                runs[(name, mode)].append(res)
                med = statistics.median(res['times'])
                print(f'round {r + 1}/{args.rounds} batch {batch_size} {mode:5s} {name:11s} '
                      f'{batch_size / med:8.2f} img/s (median {med * 1e3:.0f} ms) peak {res["peak_mib"]:.0f} MiB, '
                      f'step {res["step_mib"]:.0f} MiB'
                      + (f' (RSS step {res["rss_step_mib"]:.0f})' if res.get('rss_step_mib') is not None else ''),
                      file=sys.stderr, flush=True)
    return runs


def fit_memory(args) -> None:
    """Training step memory of each checkpointing setting at two batch sizes, and the line through them."""
    from utils.errors import UserError
    try:
        sizes = [int(b) for b in args.fit_batch_sizes.split(',')]
    except ValueError:
        sizes = []
    if len(sizes) != 2 or sizes[0] == sizes[1] or min(sizes) < 1:
        raise UserError(f'--fit-batch-sizes {args.fit_batch_sizes}: give two different batch sizes, e.g. 1,2')
    if args.warmup < 1:  # AdamW creates its state in its first step, which is not step memory
        raise UserError('--fit-batch-sizes needs --warmup 1 or more: the step memory is measured after a first step')
    path = (args.paths or 'fused').split(',')[0]
    checkpointing = {'off': [False], 'on': [True], 'both': [False, True]}[args.grad_checkpointing]
    fits = {}
    for ckpt in checkpointing:
        name = setup_name(path, ckpt)
        step = [statistics.median(r['step_mib'] for r in measure(args, [(path, ckpt)], ['train'], b)[(name, 'train')])
                for b in sizes]
        b = (step[1] - step[0]) / (sizes[1] - sizes[0])
        fits[name] = dict(a_mib=step[0] - b * sizes[0], b_mib=b, step_mib=dict(zip(sizes, step)))
        print(f'{args.model} T={args.T or "default"} img {args.img_size or "default"} {name}: step memory '
              f'{step[0]:.0f} MiB at batch {sizes[0]}, {step[1]:.0f} MiB at batch {sizes[1]}: '
              f'{fits[name]["a_mib"]:.0f} + {b:.1f} * batch MiB', flush=True)
    if args.json:
        save_json(args.json, dict(model=args.model, T=args.T, img_size=args.img_size, device=args.device,
                                  amp=args.amp, path=path, fits=fits, machine=machine(args.device)))


def report(args, runs: dict, modes, checkpointing) -> None:
    rows = []
    names = list(dict.fromkeys(name for name, _ in runs))
    for mode in modes:
        base = None
        for path in names:
            rs = runs[(path, mode)]
            times = [t for res in rs for t in res['times']]
            med = statistics.median(times)
            row = dict(mode=mode, path=path, img_s=args.batch_size / med, step_ms=med * 1e3,
                       step_ms_min=min(times) * 1e3, step_ms_max=max(times) * 1e3,
                       peak_mib=statistics.median(res['peak_mib'] for res in rs),
                       step_mib=statistics.median(res['step_mib'] for res in rs))
            rss = [res['rss_step_mib'] for res in rs if res.get('rss_step_mib') is not None]
            if rss:
                row['rss_step_mib'] = statistics.median(rss)
            if path == 'torch' or (base is None and 'torch' not in names):
                base = row
            rows.append(row)
        for row in rows:
            if row['mode'] == mode:
                row['speedup'] = row['img_s'] / base['img_s'] if base else None
                row['mem_ratio'] = row['step_mib'] / base['step_mib'] if base and base['step_mib'] > 0 else None
                without = row['path'][:-len('+ckpt')] if row['path'].endswith('+ckpt') else None
                plain = next((r for r in rows if r['mode'] == mode and r['path'] == without), None)
                if plain is not None:
                    row['ckpt_time'] = row['step_ms'] / plain['step_ms']
                    row['ckpt_mem'] = row['step_mib'] / plain['step_mib'] if plain['step_mib'] > 0 else None
                    if plain.get('rss_step_mib') and 'rss_step_mib' in row:
                        row['ckpt_rss'] = row['rss_step_mib'] / plain['rss_step_mib']

    config = dict(model=args.model, batch_size=args.batch_size, T=args.T, img_size=args.img_size,
                  device=args.device, amp=args.amp, warmup=args.warmup, steps=args.steps, rounds=args.rounds,
                  grad_checkpointing=args.grad_checkpointing)
    mem = 'peak GPU memory' if args.device.startswith('cuda') else 'peak RSS'
    print(f"\n{args.model}, batch {args.batch_size}, T={args.T or 'default'}, {args.device}, amp {args.amp}: "
          f"median of {args.rounds}x{args.steps} steps")
    ckpt = True in checkpointing and False in checkpointing
    extra = ' time vs no ckpt | step memory vs no ckpt |' if ckpt else ''
    print(f'\n| mode | neuron path | img/s | step ms (min-max) | speed-up vs torch | {mem} MiB | step MiB | '
          f'step memory vs torch |{extra}')
    print('|---|---|---:|---:|---:|---:|---:|---:|' + ('---:|---:|' if ckpt else ''))
    notes = ['step MiB: the peak allocated during a step minus what a run holds between steps (weights, buffers, '
             'optimizer state)']
    if 'train' in modes and args.warmup < 1:
        notes.append('with --warmup 0 it includes the optimizer state AdamW creates in its first step')
    for row in rows:
        speed = f"{row['speedup']:.2f}x" if row.get('speedup') else '-'
        memr = f"{row['mem_ratio']:.2f}x" if row.get('mem_ratio') else '-'
        more = ''
        if ckpt:
            more = ''.join(f" {row[k]:.2f}x |" if row.get(k) else ' - |' for k in ('ckpt_time', 'ckpt_mem'))
        print(f"| {row['mode']} | {row['path']} | {row['img_s']:.2f} | {row['step_ms']:.0f} "
              f"({row['step_ms_min']:.0f}-{row['step_ms_max']:.0f}) | {speed} | {row['peak_mib']:.0f} | "
              f"{row['step_mib']:.0f} | {memr} |{more}")
    print('\n' + '; '.join(notes) + '.')
    for (name, mode), rs in runs.items():
        where = rs[-1].get('peak_where')
        if where:
            print(f'\n{mode} {name}, step memory while each module ran (MiB, last round): '
                  + ', '.join(f'{label} {mib:.0f}' for label, mib in where))
    rss = [row for row in rows if 'rss_step_mib' in row]
    if rss:  # CPU: the resident set, for the per-variant lines (see the module doc)
        print('\nRSS step MiB (peak resident set minus before the first step, the optimizer state included; it also '
              'counts freed memory glibc keeps): ' + ', '.join(
                  f"{row['mode']} {row['path']} {row['rss_step_mib']:.0f}"
                  + (f" ({row['ckpt_rss']:.2f}x)" if row.get('ckpt_rss') else '') for row in rss))
    if args.json:
        out = dict(config=config, machine=machine(args.device), results=rows,
                   raw={f'{p}/{m}': v for (p, m), v in runs.items()})
        save_json(args.json, out)
        print(f'\nwrote {args.json}')


if __name__ == '__main__':
    sys.path.insert(0, str(REPO))
    from utils.errors import run_cli
    run_cli(main, interrupted='interrupted; nothing was written')
