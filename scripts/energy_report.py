"""The paper's energy estimate (docs/recipe.md section 6) of a checkpoint, from one evaluation pass.

    python scripts/energy_report.py --config imagenet/imagenet.yml --checkpoint PATH --data-dir DIR --output DIR
        [--limit-batches N] [--use-ema] [--precision float32|amp] [--rate-average samples|batches]
        [--e-mac-pj 4.6] [--e-ac-pj 0.9] [--key value ...]   (any config key: --val-batch-size, --device, ...)

The pass runs in float32 like the published calculator (which evaluates without autocast), whatever the config's
training ``amp``; ``--precision amp`` evaluates under the config's ``amp_dtype`` instead (spikes, hence firing rates,
can differ slightly from float32 at the thresholds).

Works for every data set config (ImageNet, CIFAR-10/100, DVS128 Gesture, CIFAR10-DVS, the quick start's digits).
Without ``--config``, a checkpoint written by train.py brings its own config (the loading is ``energy.cli``, shared
with ``spike_report.py``). The output folder is checked before the pass, and the totals are printed before anything
is written (a failed write says what was and was not saved, exit 2). Writes into ``--output`` (and names each file
on the console):

* ``energy.json``: the report (per sample: ``mac_ops``, ``ac_ops``, ``energy_mj``, ``samples``, ``top1`` and one
  entry per counted operation), plus what was evaluated;
* ``energy.md``: totals, the paper's numbers beside ours when the config is a published ImageNet row, Q/K/V firing
  rates per block and the per-layer table;
* ``energy.png``: energy per operation (log scale, in the title's unit, share on each bar) and input firing rate per
  operation, grouped into tokenizer, attention, MLP and head; Q/K/V firing rates per block.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the repository root, for `models`, `utils` and `energy`

from utils.errors import exit_on_interrupt, run_cli  # noqa: E402  (first: Ctrl-C is one line from here)

INTERRUPTED = 'interrupted; nothing was written'
with exit_on_interrupt(INTERRUPTED):
    import json
    import time
    from dataclasses import asdict

    from energy.cli import REPORT_KEYS, model_details, prepare_report, write_report_files
    from energy.constants import E_AC_PJ, E_MAC_PJ
    from utils.config import Bounds, Key

EXTRA_KEYS = {
    **REPORT_KEYS,
    'e_mac_pj': Key(E_MAC_PJ, float, 'energy of one multiply-accumulate in pJ (45 nm)', bounds=Bounds(0)),
    'e_ac_pj': Key(E_AC_PJ, float, 'energy of one accumulate in pJ (45 nm)', bounds=Bounds(0)),
    'rate_average': Key('samples', str, "Q/K/V firing rates over all samples, or the mean of per-batch rates as the "
                        "published calculator (equal when every batch has the same size)",
                        choices=('samples', 'batches')),
}


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

    run = prepare_report(list(sys.argv[1:] if argv is None else argv), EXTRA_KEYS,
                         'whose energy to estimate', 'energy')
    cfg, model, device, amp_dtype, total, output = run.cfg, run.model, run.device, run.amp_dtype, run.total, run.output

    start = time.time()
    report = estimate_energy(model, run.batches, e_mac_pj=cfg.e_mac_pj, e_ac_pj=cfg.e_ac_pj,
                             rate_average=cfg.rate_average, device=device, autocast_dtype=amp_dtype)
    seconds = time.time() - start
    row = published_row(cfg, model)

    title = f'{cfg.model} on {cfg.dataset}'
    top1 = f', top-1 {report.top1:.2f}%' if report.top1 is not None else ''
    samples = f'{report.samples} sample{"s" if report.samples != 1 else ""}'
    print(f'{title} ({samples}{top1}): {report.mac_ops:,.0f} MAC, {si(report.ac_ops)} AC, '
          f'{mj(report.energy_mj)} per sample' + (f' (paper: {mj(row.energy_mj)})' if row else ''), flush=True)
    info = dict(model=cfg.model, dataset=cfg.dataset, config=cfg.source, checkpoint=cfg.checkpoint,
                use_ema=cfg.use_ema, time_steps=model.T, num_heads=model.num_heads, embed_dims=model.embed_dims,
                depths=model.depths, batches=total, device=str(device),
                amp_dtype=str(amp_dtype).replace('torch.', '') if amp_dtype else None, seconds=round(seconds, 3))

    def dump(path):
        with open(path, 'w') as f:
            json.dump({**report.to_dict(), 'run': info, 'paper': asdict(row) if row else None}, f, indent=2)

    def markdown(path):
        with open(path, 'w') as f:
            f.write(report.to_markdown(title=f'Energy estimate: {title}', paper=row, details=model_details(run)))

    write_report_files(output, [('energy.json', dump), ('energy.md', markdown),
                                ('energy.png', lambda path: plot_report(report, path, title=title))])
    return dict(report=report, output=output, paper=row)


if __name__ == '__main__':
    run_cli(main, interrupted=INTERRUPTED)
