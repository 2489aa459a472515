"""Mutation check: plant plausible one-line bugs, one at a time, and see which the tests catch (docs/testing.md).

    python scripts/mutation_check.py                 # every mutant (about 20-30 minutes on 2 cores)
    python scripts/mutation_check.py --list          # the mutants, with the tests that should kill each
    python scripts/mutation_check.py --check         # seconds: does every mutant still apply to the code?
    python scripts/mutation_check.py --only best-by-lowest-top1 rank-seed-ignored
    python scripts/mutation_check.py --area energy safety --baseline

Each mutant replaces one exact line fragment of one file by another, in a temporary copy of the working tree (git's
tracked and untracked, not ignored files; never the working tree itself), then runs its test subset with
``pytest -x``. A mutant is *killed* when the subset fails, *survives* when it passes. Exit status: 0 when every
mutant selected was killed, 1 when one survived (or ran past --timeout), 2 when a mutant no longer applies (its
fragment is not found exactly once: the code changed; update the list).

Why a curated list rather than mutmut or cosmic-ray: their generated operators (every ``+`` to ``-``, every constant
plus one) flood a numerical code base with equivalent or crashing mutants, and each runs the whole suite. The bugs
worth guarding against here are the ones a reviewer would plausibly write: a recipe value, a wiring slip, an
off-by-one in a comparison, a safety check weakened. Each mutant names the tests that should kill it, so a run
takes minutes, and a survivor points at a missing test. Not run in CI: it is slow by nature.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple, Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXIT_SURVIVED, EXIT_STALE = 1, 2


class Mutant(NamedTuple):
    area: str           # model, data, wiring, metrics, energy, safety
    name: str           # unique, for --only
    path: str           # the file, relative to the repository root
    original: str       # a fragment found exactly once in the file
    mutated: str        # what replaces it
    tests: Tuple[str, ...]  # pytest arguments: the subset that should kill it


def _m(area, name, path, original, mutated, *tests) -> Mutant:
    return Mutant(area, name, path, original, mutated, tests)


MUTANTS = (
    # ---- model: the published numerics
    _m('model', 'attention-scale', 'models/layers.py', 'ATTENTION_SCALE = 0.125', 'ATTENTION_SCALE = 0.25',
       'tests/test_models.py'),
    _m('model', 'attention-lif-threshold', 'models/layers.py', 'self.attn_lif = make_lif(v_threshold=0.5)',
       'self.attn_lif = make_lif()', 'tests/test_models.py'),
    _m('model', 'attention-softmax', 'models/layers.py', '    return q @ (k.transpose(-2, -1) @ v)',
       '    return (q @ k.transpose(-2, -1)).softmax(-1) @ v', 'tests/test_attention_product.py', 'tests/test_models.py'),
    _m('model', 'attention-softmax-in-the-model', 'models/layers.py', '    return (v_t @ k_t.transpose(-2, -1)) @ q_t',
       '    return (v_t @ k_t.transpose(-2, -1)).softmax(-2) @ q_t', 'tests/test_models.py'),
    _m('model', 'mlp-residual-dropped', 'models/layers.py', 'return x + self.mlp(x)', 'return self.mlp(x)',
       'tests/test_models.py'),
    _m('model', 'head-sums-over-time', 'models/spikingformer.py', 'return self.head(x.flatten(3).mean(3).mean(0))',
       'return self.head(x.flatten(3).mean(3).sum(0))', 'tests/test_models.py'),
    _m('model', 'surrogate-alpha', 'models/neuron.py', 'surrogate_function=surrogate.Sigmoid(alpha=4.)',
       'surrogate_function=surrogate.Sigmoid(alpha=2.)', 'tests/test_fast_lif.py', 'tests/test_models.py'),
    _m('model', 'reset-not-detached', 'models/neuron.py', 'detach_reset=True', 'detach_reset=False',
       'tests/test_fast_lif.py', 'tests/test_models.py'),
    _m('model', 'checkpoint-stem-statistics-twice', 'models/fire_recompute.py',
       'with torch.enable_grad(), _autocast(ctx.autocast), running_stats_kept(stem.stem_bn):',
       'with torch.enable_grad(), _autocast(ctx.autocast):', 'tests/test_fire_recompute.py'),
    _m('model', 'checkpoint-lif-mask-from-surrogate', 'models/fused_lif.py',
       'not_fired = torch.lt(h_seq[:T - 1], v_threshold)  # bool, taken before h_seq becomes the surrogate',
       'not_fired = torch.lt(h_seq[:T - 1].sigmoid(), v_threshold)', 'tests/test_fire_recompute.py'),
    # ---- data: what the loaders give
    _m('data', 'eval-ignores-crop-pct', 'utils/data/loaders.py', 'num_workers=cfg.workers, crop_pct=cfg.crop_pct, ',
       'num_workers=cfg.workers, ', 'tests/test_eval_transforms.py'),
    _m('data', 'eval-with-training-transforms', 'utils/data/loaders.py',
       'is_training=False, interpolation=cfg.interpolation',
       'is_training=True, interpolation=cfg.interpolation', 'tests/test_eval_transforms.py'),
    _m('data', 'eval-bilinear', 'utils/data/loaders.py', 'is_training=False, interpolation=cfg.interpolation',
       "is_training=False, interpolation='bilinear'", 'tests/test_eval_transforms.py'),
    _m('data', 'cifar100-own-mean-std', 'utils/data/loaders.py',
       "'cifar100': dict(num_classes=100, img_size=32, mean=CIFAR_MEAN, std=CIFAR_STD)",
       "'cifar100': dict(num_classes=100, img_size=32, mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762))",
       'tests/test_defaults.py'),
    _m('data', 'ratio-default-timm', 'utils/config.py', "'ratio': _k((1.0, 1.0), FLOATS",
       "'ratio': _k((3 / 4, 4 / 3), FLOATS", 'tests/test_defaults.py'),
    _m('data', 'hflip-fixed', 'utils/data/loaders.py', 'hflip=cfg.hflip,', 'hflip=0.5,',
       'tests/test_train_transforms.py', 'tests/test_wiring.py'),
    _m('data', 'eval-shard-from-zero', 'utils/data/loaders.py', 'range(rank, len(dataset), world)',
       'range(0, len(dataset), world)', 'tests/test_distributed.py::test_distributed_evaluation_is_exact'),
    _m('data', 'mixup-off-one-epoch-late', 'utils/data/loaders.py', 'epoch < cfg.mixup_off_epoch',
       'epoch <= cfg.mixup_off_epoch', 'tests/test_recipe.py'),
    _m('data', 'dvs-eval-augmented', 'utils/data/dvs_data.py', 'for base, transform in zip(bases, (augment, None)):',
       'for base, transform in zip(bases, (augment, augment)):', 'tests/test_eval_transforms.py'),
    # ---- wiring: the recipe and the options reach the run
    _m('wiring', 'best-by-lowest-top1', 'utils/training/main.py', "metrics['top1'] > best_metric",
       "metrics['top1'] < best_metric", 'tests/test_selection.py'),
    _m('wiring', 'best-tie-takes-later', 'utils/training/main.py', "metrics['top1'] > best_metric",
       "metrics['top1'] >= best_metric", 'tests/test_selection.py'),
    # every training draw is keyed by (seed, rank, epoch, position) (utils.data.resumable_data), so the key is where
    # a rank or an epoch can be lost; the per-epoch seed_everything of utils.training.main no longer feeds any draw
    _m('wiring', 'rank-seed-ignored', 'utils/data/loaders.py', 'EpochKey(cfg.seed, rank)', 'EpochKey(cfg.seed, 0)',
       'tests/test_rank_randomness.py'),
    _m('wiring', 'epoch-seed-ignored', 'utils/data/resumable_data.py',
       'derived_seed(self.seed, self.rank, self.epoch, kind, number)', 'derived_seed(self.seed, self.rank, 0, kind, number)',
       'tests/test_rank_randomness.py'),
    _m('wiring', 'finetune-ignores-use-ema', 'utils/training/main.py',
       'load_initial_checkpoint(model, initial_checkpoint, cfg.use_ema, cfg.trust_checkpoint)',
       'load_initial_checkpoint(model, initial_checkpoint, False, cfg.trust_checkpoint)', 'tests/test_option_pairs.py'),
    _m('wiring', 'fp16-loss-unscaled', 'utils/training/engine.py',
       '(scaler.scale(loss) if scaler is not None else loss)',
       '(loss)', 'tests/test_value_guards.py'),
    _m('wiring', 'accumulation-ignores-limit', 'utils/training/engine.py',
       'accumulation_group_size(i, total, grad_accum_steps)',
       'accumulation_group_size(i, len(loader), grad_accum_steps)', 'tests/test_option_pairs.py'),
    _m('wiring', 'ema-updated-on-skipped-steps', 'utils/training/engine.py', 'if ema is not None and stepped:',
       'if ema is not None:', 'tests/test_fp16.py::test_inf_gradients_skip_the_step_and_the_ema_not_the_run'),
    _m('wiring', 'ema-bn-not-synced', 'utils/training/main.py', 'sync_bn_stats(ema.module, cfg.dist_bn, info.world)',
       'pass', 'tests/test_rank_randomness.py::test_the_ema_of_several_processes_is_the_same_and_saved'),
    _m('wiring', 'ema-resumed-from-model', 'utils/run/checkpoint.py',
       "source = checkpoint if 'state_dict_ema' in checkpoint else {'state_dict': checkpoint['state_dict']}",
       "source = {'state_dict': checkpoint['state_dict']}", 'tests/test_engine.py',
       'tests/test_rank_randomness.py::test_the_ema_of_several_processes_is_the_same_and_saved'),
    _m('wiring', 'scaler-not-resumed', 'utils/run/checkpoint.py', "scaler.load_state_dict(checkpoint['amp_scaler'])",
       'pass', 'tests/test_fp16.py::test_a_killed_float16_run_resumes_exactly'),
    _m('wiring', 'no-label-smoothing', 'utils/training/engine.py',
       'return LabelSmoothingCrossEntropy(smoothing) if smoothing > 0 else torch.nn.CrossEntropyLoss()',
       'return torch.nn.CrossEntropyLoss()', 'tests/test_wiring.py'),
    _m('wiring', 'warmup-from-min-lr', 'utils/training/main.py', 'warmup_lr=cfg.warmup_lr', 'warmup_lr=cfg.min_lr',
       'tests/test_wiring.py'),
    _m('wiring', 'weight-decay-fixed', 'utils/training/main.py', 'weight_decay=cfg.weight_decay,', 'weight_decay=0.05,',
       'tests/test_wiring.py'),
    _m('wiring', 'event-data-eval-under-amp', 'utils/data/loaders.py', 'cfg.eval_amp = cfg.dataset not in DVS_DATASETS',
       'cfg.eval_amp = True', 'tests/test_recipe.py', 'tests/test_defaults.py'),
    _m('wiring', 'dist-bn-default-reduce', 'utils/config.py', "'dist_bn': _k('broadcast', str,",
       "'dist_bn': _k('reduce', str,", 'tests/test_recipe.py', 'tests/test_defaults.py'),
    # ---- metrics
    _m('metrics', 'top5-is-top4', 'utils/training/engine.py',
       'top = output.topk(min(5, output.shape[1]), dim=1).indices',
       'top = output.topk(min(4, output.shape[1]), dim=1).indices', 'tests/test_metrics.py'),
    _m('metrics', 'eval-loss-batch-mean', 'utils/training/engine.py',
       "F.cross_entropy(output, targets, reduction='sum')",
       "F.cross_entropy(output, targets, reduction='mean')", 'tests/test_metrics.py'),
    _m('metrics', 'train-loss-per-batch', 'utils/training/engine.py', 'loss_sum += value * images.shape[0]',
       'loss_sum += value', 'tests/test_metrics.py', 'tests/test_grad_accum.py'),
    # ---- energy
    _m('energy', 'ac-energy', 'energy/constants.py', 'E_AC_PJ = 0.9', 'E_AC_PJ = 0.92', 'tests/test_energy.py'),
    _m('energy', 'bias-not-counted', 'energy/counter.py',
       'return out * per_output + (out if module.bias is not None else 0)', 'return out * per_output',
       'tests/test_energy.py'),
    _m('energy', 'attention-ops-without-heads', 'energy/counter.py',
       'attention.dense += T * B * attention.heads * N * d * d', 'attention.dense += T * B * N * d * d',
       'tests/test_energy.py'),
    # ---- safety and bad input
    _m('safety', 'checkpoint-unpickled', 'models/checkpoint.py', 'weights_only=True, mmap=mmap',
       'weights_only=False, mmap=mmap', 'tests/test_safe_loading.py'),
    _m('safety', 'cifar-unpickler-open', 'utils/data/loaders.py', 'if (module, name) in self.ALLOWED:', 'if True:',
       'tests/test_safe_loading.py'),
    _m('safety', 'output-not-checked', 'utils/run/run_folder.py', '    if not entries:\n        return',
       '    if True:\n        return', 'tests/test_run_folder.py::test_a_fresh_run_refuses_a_non_empty_output'),
    _m('safety', 'smoothing-one-accepted', 'utils/config.py', "'label smoothing', bounds=Bounds(0, 1, hi_open=True)",
       "'label smoothing', bounds=Bounds(0, 1)", 'tests/test_value_guards.py'),
    _m('safety', 'crop-pct-zero-accepted', 'utils/config.py', "bounds=Bounds(0, 1, lo_open=True)),\n    'scale'",
       "bounds=Bounds(0, 1)),\n    'scale'", 'tests/test_value_guards.py'),
    _m('safety', 'bad-input-exit-code', 'utils/errors.py', 'EXIT_BAD_INPUT = 2', 'EXIT_BAD_INPUT = 1',
       'tests/test_value_guards.py::test_bad_input_exits_with_status_2'),
)


def working_tree_files(root: str) -> list:
    """The files of the working tree as git sees them: tracked, and untracked but not ignored."""
    out = subprocess.run(['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'], cwd=root,
                         capture_output=True, check=True).stdout
    return [p for p in out.decode().split('\0') if p and os.path.isfile(os.path.join(root, p))]


def copy_tree(root: str, dest: str) -> None:
    for rel in working_tree_files(root):
        os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
        shutil.copy2(os.path.join(root, rel), os.path.join(dest, rel))


def stale(mutants: Sequence[Mutant], root: str) -> list:
    """Lines saying which mutants no longer apply to the files under ``root``."""
    problems = []
    for m in mutants:
        path = os.path.join(root, m.path)
        count = open(path).read().count(m.original) if os.path.isfile(path) else -1
        if count != 1:
            problems.append(f'{m.name}: {m.path} ' + ('does not exist' if count < 0 else
                                                      f'holds the fragment {count} times, not once: {m.original!r}'))
    return problems


def run_pytest(tree: str, tests: Sequence[str], timeout: float) -> Tuple[str, str]:
    """``(outcome, detail)``: 'passed', 'failed' (detail: the first failure's test and exception type),
    'no tests' or 'timeout'."""
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONDONTWRITEBYTECODE='1', COLUMNS='1000')
    try:
        proc = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-x', '-p', 'no:cacheprovider', *tests],
                              cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return 'timeout', f'ran past {timeout:g} s'
    if proc.returncode == 0:
        return 'passed', ''
    if proc.returncode == 5:
        return 'no tests', 'pytest collected no test: check the subset'
    failed = re.search(r'^(?:FAILED|ERROR) (\S+)', proc.stdout, re.M)
    raised = re.search(r'^E\s+(\w+(?:Error|Exception|Exit)|Failed|assert)\b', proc.stdout, re.M)
    how = {'assert': 'AssertionError', None: 'error'}.get(raised and raised.group(1), raised and raised.group(1))
    return 'failed', f'{failed.group(1)} ({how})' if failed else f'pytest exit {proc.returncode}'


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--list', action='store_true', help='list the mutants and exit')
    parser.add_argument('--check', action='store_true', help='only check that every mutant still applies (seconds)')
    parser.add_argument('--only', nargs='+', metavar='NAME', help='run these mutants only')
    parser.add_argument('--area', nargs='+', choices=sorted({m.area for m in MUTANTS}), help='run these areas only')
    parser.add_argument('--baseline', action='store_true', help='first run every selected subset unmutated')
    parser.add_argument('--timeout', type=float, default=900, help='seconds per mutant (default 900)')
    parser.add_argument('--keep', action='store_true', help='keep the temporary copy (its path is printed)')
    args = parser.parse_args(argv)
    names = {m.name for m in MUTANTS}
    unknown = sorted(set(args.only or ()) - names)
    if unknown:
        print(f'error: unknown mutant(s) {", ".join(unknown)}; --list shows the names.', file=sys.stderr)
        return EXIT_STALE
    chosen = [m for m in MUTANTS if (not args.only or m.name in args.only) and (not args.area or m.area in args.area)]
    if args.list:
        for m in chosen:
            print(f'{m.area:8} {m.name:32} {m.path}: {m.original!r} -> {m.mutated!r}\n{"":42}kill: {" ".join(m.tests)}')
        return 0
    problems = stale(chosen, REPO)
    if problems:
        print('error: these mutants no longer apply (the code changed; update MUTANTS in scripts/mutation_check.py):\n'
              + '\n'.join(f'  {p}' for p in problems), file=sys.stderr)
        return EXIT_STALE
    if args.check:
        print(f'all {len(chosen)} mutants apply.')
        return 0
    tree = tempfile.mkdtemp(prefix='mutation-check-')
    try:
        copy_tree(REPO, tree)
        print(f'{len(chosen)} mutants, in a copy of the working tree: {tree}', flush=True)
        if args.baseline:
            subset = sorted({t for m in chosen for t in m.tests})
            outcome, detail = run_pytest(tree, subset, args.timeout * 4)
            if outcome != 'passed':
                print(f'error: the unmutated tests do not pass ({outcome}: {detail}); fix that first.', file=sys.stderr)
                return EXIT_STALE
            print('baseline: the unmutated subsets pass', flush=True)
        survivors, results = [], []
        for i, m in enumerate(chosen, 1):
            path = os.path.join(tree, m.path)
            with open(path) as f:
                text = f.read()
            with open(path, 'w') as f:
                f.write(text.replace(m.original, m.mutated))
            start = time.monotonic()
            try:
                outcome, detail = run_pytest(tree, m.tests, args.timeout)
            finally:
                with open(path, 'w') as f:
                    f.write(text)
            verdict = 'killed' if outcome == 'failed' else 'SURVIVED' if outcome == 'passed' else outcome.upper()
            if verdict != 'killed':
                survivors.append(m)
            results.append((m, verdict, detail))
            print(f'[{i}/{len(chosen)}] {verdict:8} {m.area:8} {m.name:32} {time.monotonic() - start:5.0f} s  {detail}',
                  flush=True)
        print(f'\n{len(chosen) - len(survivors)} of {len(chosen)} mutants killed.')
        for m in survivors:
            print(f'  not killed: {m.name} ({m.path}: {m.original!r} -> {m.mutated!r}); tests: {" ".join(m.tests)}')
        return EXIT_SURVIVED if survivors else 0
    finally:
        if args.keep:
            print(f'kept: {tree}')
        else:
            shutil.rmtree(tree, ignore_errors=True)


if __name__ == '__main__':
    sys.exit(main())
