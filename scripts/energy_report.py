"""The paper's energy estimate (SPEC section 6) of a checkpoint, from one evaluation pass.

    python scripts/energy_report.py --config imagenet/imagenet.yml --checkpoint PATH --data-dir DIR --output DIR
        [--limit-batches N] [--use-ema] [--precision float32|amp] [--rate-average samples|batches]
        [--e-mac-pj 4.6] [--e-ac-pj 0.9] [--key value ...]   (any config key: --val-batch-size, --device, ...)

The pass runs in float32 like the published calculator (which evaluates without autocast), whatever the config's
training ``amp``; ``--precision amp`` evaluates under the config's ``amp_dtype`` instead (spikes, hence firing rates,
can differ slightly from float32 at the thresholds).

Works for every data set config (ImageNet, CIFAR-10/100, DVS128 Gesture, CIFAR10-DVS, the quick start's digits).
Without ``--config``, a checkpoint written by train.py brings its own config. Writes into ``--output``:

* ``energy.json``: the report (per sample: ``mac_ops``, ``ac_ops``, ``energy_mj``, ``samples``, ``top1`` and one
  entry per counted operation), plus what was evaluated;
* ``energy.md``: totals, the paper's numbers beside ours when the config is a published ImageNet row, Q/K/V firing
  rates per block and the per-layer table;
* ``energy.png``: energy and input firing rate per operation, Q/K/V firing rates per block.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the repository root, for `models`, `utils` and `energy`

from utils.errors import UserError, exit_on_interrupt, run_cli  # noqa: E402  (first: Ctrl-C is one line from here)

INTERRUPTED = 'interrupted; nothing was written'
with exit_on_interrupt(INTERRUPTED):
    import itertools
    import json
    import time
    from dataclasses import asdict

    from utils.config import Bounds, Key, load_config

EXTRA_KEYS = {
    'limit_batches': Key(None, int, 'evaluate at most this many batches; null = the whole evaluation split',
                         nullable=True, bounds=Bounds(1)),
    'e_mac_pj': Key(4.6, float, 'energy of one multiply-accumulate in pJ (45 nm)', bounds=Bounds(0)),
    'e_ac_pj': Key(0.9, float, 'energy of one accumulate in pJ (45 nm)', bounds=Bounds(0)),
    'precision': Key('float32', str, "float32, as the published calculator (which ignores AMP), or 'amp': autocast "
                     "with the config's amp_dtype; the config's own amp key (a training setting) is not used here",
                     choices=('float32', 'amp')),
    'rate_average': Key('samples', str, "Q/K/V firing rates over all samples, or the mean of per-batch rates as the "
                        "published calculator (equal when every batch has the same size)",
                        choices=('samples', 'batches')),
}


def _has_config(argv) -> bool:
    return any(a == '--config' or a.startswith('--config=') for a in argv)


def published_row(cfg, model):
    """The paper's row when the config is a published ImageNet configuration (registered variant, its default
    architecture, T = 4, 224 x 224, 1000 classes), else None."""
    from energy.paper import paper_row
    row = paper_row(cfg.model, cfg.dataset)
    if row is None:
        return None
    reference = row.architecture
    actual = dict(embed_dims=model.embed_dims, depths=model.depths, num_heads=model.num_heads, T=model.T,
                  num_classes=model.num_classes, img_size=cfg.img_size)
    return row if actual == reference else None


def main(argv=None) -> dict:
    from energy import estimate_energy
    from energy.plot import plot_report
    from energy.report import mj, si
    from models import read_checkpoint
    from utils.data import build_eval_loader, resolve_data_config
    from utils.distributed import select_device
    from utils.main import amp_setup, default_output, load_trained_model

    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = load_config(argv, None, extra_keys=EXTRA_KEYS)
    if cfg.checkpoint is None:
        raise UserError('--checkpoint PATH is required: the .pth.tar file whose energy to estimate (a run\'s '
                        'model_best.pth.tar, or a published checkpoint with the --config of its data set).')
    checkpoint = read_checkpoint(cfg.checkpoint)
    trained_args = checkpoint.get('args') if isinstance(checkpoint, dict) else None
    if not _has_config(argv):
        if not isinstance(trained_args, dict):
            raise UserError(f'{cfg.checkpoint} does not carry its training config: pass the config of its data set '
                            f'and model with --config (e.g. imagenet/imagenet.yml for the official 8-768).')
        own = ('output', 'resume', 'checkpoint', 'use_ema', 'local_rank')
        cfg = load_config(argv, None, extra_keys=EXTRA_KEYS,
                          base={k: v for k, v in trained_args.items() if k not in own})
    device = select_device(cfg)
    resolve_data_config(cfg)
    amp_dtype = None
    if cfg.precision == 'amp':
        cfg.amp = True
        amp_dtype, _ = amp_setup(cfg, device)
    model = load_trained_model(cfg, checkpoint, device)
    loader = build_eval_loader(cfg, device=device)
    limit = cfg.limit_batches if cfg.limit_batches is not None else cfg.limit_eval_batches
    batches = loader if limit is None else itertools.islice(loader, limit)
    total = len(loader) if limit is None else min(limit, len(loader))
    if sys.stderr.isatty():
        from tqdm import tqdm
        batches = tqdm(batches, total=total, desc='energy', dynamic_ncols=True)

    start = time.time()
    report = estimate_energy(model, batches, e_mac_pj=cfg.e_mac_pj, e_ac_pj=cfg.e_ac_pj,
                             rate_average=cfg.rate_average, device=device, autocast_dtype=amp_dtype)
    seconds = time.time() - start
    row = published_row(cfg, model)

    output = cfg.output or default_output(cfg, 'energy')
    os.makedirs(output, exist_ok=True)
    title = f'{cfg.model} on {cfg.dataset}'
    info = dict(model=cfg.model, dataset=cfg.dataset, config=cfg.source, checkpoint=cfg.checkpoint,
                use_ema=cfg.use_ema, time_steps=model.T, num_heads=model.num_heads, embed_dims=model.embed_dims,
                depths=model.depths, batches=total, device=str(device),
                amp_dtype=str(amp_dtype).replace('torch.', '') if amp_dtype else None, seconds=round(seconds, 3))
    with open(os.path.join(output, 'energy.json'), 'w') as f:
        json.dump({**report.to_dict(), 'run': info, 'paper': asdict(row) if row else None}, f, indent=2)
    details = [f'model `{cfg.model}` (T={model.T}, depth {model.depths}, dim {model.embed_dims}, '
               f'{model.num_heads} heads), data set `{cfg.dataset}`',
               f'checkpoint `{cfg.checkpoint}`{" (EMA weights)" if cfg.use_ema else ""}, config '
               + (f'`{cfg.source}`' if cfg.source else 'the one saved in the checkpoint'),
               f'{total} batch{"es" if total != 1 else ""} on {device}'
               + (f', autocast {info["amp_dtype"]}' if amp_dtype else '')]
    with open(os.path.join(output, 'energy.md'), 'w') as f:
        f.write(report.to_markdown(title=f'Energy estimate: {title}', paper=row, details=details))
    plot_report(report, os.path.join(output, 'energy.png'), title=title)

    top1 = f', top-1 {report.top1:.2f}%' if report.top1 is not None else ''
    samples = f'{report.samples} sample{"s" if report.samples != 1 else ""}'
    print(f'{title} ({samples}{top1}): {si(report.mac_ops, digits=6)} MAC, '
          f'{si(report.ac_ops, digits=6)} AC, {mj(report.energy_mj, digits=6)} per sample'
          + (f' (paper: {row.energy_mj} mJ)' if row else '')
          + f'\nreport: {os.path.join(output, "energy.md")}')
    return dict(report=report, output=output, paper=row)


if __name__ == '__main__':
    run_cli(main, interrupted=INTERRUPTED)
