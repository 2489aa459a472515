"""The paper's energy estimate (docs/recipe.md section 6) of a checkpoint, from one evaluation pass.

    python scripts/energy_report.py --config imagenet/imagenet.yml --checkpoint PATH --data-dir DIR --output DIR
        [--limit-batches N] [--use-ema] [--precision float32|amp] [--rate-average samples|batches]
        [--multispike mac|ac] [--e-mac-pj 4.6] [--e-ac-pj 0.9] [--key value ...]   (any config key)
    ... --checkpoint PATH --input random|zeros [--samples 16] [--seed 42]     (no data set: synthetic inputs)
    ... --model NAME --no-checkpoint [--assume-rate 0.05:0.3:6]               (architecture only, assumed rates)
    ... --compare MODEL_A MODEL_B --checkpoint A --checkpoint B [--data-dir DIR]  (one table, both rules)

``--multispike`` is the counting rule for layers whose input is spike counts (sums of spikes, as in Spikformer's
residual stream): ``mac`` (default, the published calculator's Nspks_max = 1: such a layer costs MACs) or ``ac``
(Nspks_max = 30: ACs times the mean count). It changes nothing for Spikingformer, whose layers all read 0/1 spikes.

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

``energy.json`` also records ``provenance`` (command, git commit, versions, host: ``utils.run.provenance``) and
``checkpoint`` (path, SHA-256, and the provenance of the training run when the checkpoint records one).
Operations the estimator cannot classify are listed in ``unclassified`` (and under "Not counted"), never dropped
silently. ``--no-checkpoint`` writes ``architecture.json``/``architecture.md`` instead; ``--compare`` writes
``compare.json``/``compare.md`` (``energy.compare``). The details are in docs/energy.md.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the repository root, for `models`, `utils` and `energy`

from utils.errors import exit_on_interrupt, run_cli  # noqa: E402  (first: Ctrl-C is one line from here)

INTERRUPTED = 'interrupted; nothing was written'
with exit_on_interrupt(INTERRUPTED):
    import time
    from dataclasses import asdict

    from energy.cli import (REPORT_KEYS, json_file, model_details, prepare_report, report_provenance, text_file,
                            write_report_files)
    from energy.constants import E_AC_PJ, E_MAC_PJ
    from energy.counter import MULTISPIKE
    from energy.synthetic import INPUTS
    from utils.config import Bounds, Key

EXTRA_KEYS = {
    **REPORT_KEYS,
    'e_mac_pj': Key(E_MAC_PJ, float, 'energy of one multiply-accumulate in pJ (45 nm)', bounds=Bounds(0)),
    'e_ac_pj': Key(E_AC_PJ, float, 'energy of one accumulate in pJ (45 nm)', bounds=Bounds(0)),
    'rate_average': Key('samples', str, "Q/K/V firing rates over all samples, or the mean of per-batch rates as the "
                        "published calculator (equal when every batch has the same size)",
                        choices=('samples', 'batches')),
    'multispike': Key('mac', str, "counting rule for layers on spike counts (sums of spikes, e.g. Spikformer): 'mac' "
                      "(published default Nspks_max=1: MACs) or 'ac' (Nspks_max=30: ACs x mean count)",
                      choices=MULTISPIKE),
    'input': Key('data', str, "'data' (the evaluation split), or synthetic inputs without a data set: 'random' "
                 "(normal images / Poisson event counts) or 'zeros'", choices=INPUTS),
    'samples': Key(16, int, 'how many synthetic inputs --input random|zeros feeds', bounds=Bounds(1)),
    'no_checkpoint': Key(False, bool, 'architecture-only report: no weights, no data; energy at --assume-rate'),
    'assume_rate': Key('0.05:0.3:6', str, 'ASSUMED firing rate(s) of --no-checkpoint: 0.15, 0.05,0.1,0.2 or a sweep '
                       'START:STOP:COUNT'),
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

    args = list(sys.argv[1:] if argv is None else argv)
    if any(a == '--compare' or a.startswith('--compare=') for a in args):
        from energy.compare import compare_main
        return compare_main(args, EXTRA_KEYS, provenance_argv=argv)
    run = prepare_report(args, EXTRA_KEYS, 'whose energy to estimate', 'energy')
    if run.data == 'none':
        return architecture_main(run, argv)
    cfg, model, device, amp_dtype, total, output = run.cfg, run.model, run.device, run.amp_dtype, run.total, run.output

    start = time.time()
    report = estimate_energy(model, run.batches, e_mac_pj=cfg.e_mac_pj, e_ac_pj=cfg.e_ac_pj,
                             rate_average=cfg.rate_average, device=device, autocast_dtype=amp_dtype,
                             multispike=cfg.multispike)
    seconds = time.time() - start
    row = published_row(cfg, model) if run.data == 'data' else None

    title = f'{cfg.model} on {cfg.dataset}'
    if run.data != 'data':
        title = f'{cfg.model} on synthetic {run.data} inputs (seed {cfg.seed}; not {cfg.dataset} data)'
    top1 = f', top-1 {report.top1:.2f}%' if report.top1 is not None else ''
    samples = f'{report.samples} sample{"s" if report.samples != 1 else ""}'
    print(f'{title} ({samples}{top1}): {report.mac_ops:,.0f} MAC, {si(report.ac_ops)} AC, '
          f'{mj(report.energy_mj)} per sample' + (f' (paper: {mj(row.energy_mj)})' if row else ''), flush=True)
    info = dict(model=cfg.model, dataset=cfg.dataset, config=cfg.source, checkpoint=cfg.checkpoint,
                use_ema=cfg.use_ema, time_steps=model.T, num_heads=model.num_heads, embed_dims=model.embed_dims,
                depths=model.depths, batches=total, device=str(device),
                amp_dtype=str(amp_dtype).replace('torch.', '') if amp_dtype else None, seconds=round(seconds, 3))
    if run.data != 'data':
        info.update(input=run.data, synthetic_samples=report.samples, seed=cfg.seed)
    for u in report.unclassified:
        print(f'not counted: {u.name or "(model)"}: {u.what} ({u.calls} calls); see "Not counted" in energy.md',
              file=sys.stderr)
    extra = report_provenance('energy_report.py', argv, run)

    data = {**report.to_dict(), 'run': info, 'paper': asdict(row) if row else None, **extra}
    markdown = text_file(lambda: report.to_markdown(title=f'Energy estimate: {title}', paper=row,
                                                    details=model_details(run)))
    write_report_files(output, [('energy.json', json_file(data)), ('energy.md', markdown),
                                ('energy.png', lambda path: plot_report(report, path, title=title))])
    return dict(report=report, output=output, paper=row)


def architecture_main(run, argv) -> dict:
    """``--no-checkpoint``: dense operations per layer and the energy at assumed firing rates (energy.synthetic)."""
    from energy.synthetic import architecture_counts, architecture_markdown, energy_at_rates, parse_rates
    from energy.report import mj
    from utils.config import ConfigError

    cfg, model = run.cfg, run.model
    try:
        rates = parse_rates(cfg.assume_rate)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    counts = architecture_counts(model, run.batches[0].to(run.device))
    estimates = {rule: energy_at_rates(counts, rates, rule, cfg.e_mac_pj, cfg.e_ac_pj) for rule in MULTISPIKE}
    mac = estimates['mac'][0].mac_ops
    title = f'Architecture-only energy estimate (assumed firing rates): {cfg.model}'
    print(f'{cfg.model} (no checkpoint, no data): {mac:,.0f} MAC per sample under rule mac; at an ASSUMED firing '
          f'rate of {rates[0]:.4g}: {mj(estimates[cfg.multispike][0].energy_mj)} (rule {cfg.multispike})', flush=True)
    details = [f'model `{cfg.model}` (T={model.T}), input of the `{cfg.dataset}` layout, size {cfg.img_size}',
               f'E_MAC = {cfg.e_mac_pj} pJ, E_AC = {cfg.e_ac_pj} pJ (45 nm)']
    extra = report_provenance('energy_report.py', argv, run)
    data = {'assumed': True, 'model': cfg.model, 'dataset': cfg.dataset, 'img_size': cfg.img_size,
            **counts.to_dict(), 'estimates': {rule: [asdict(e) for e in rows] for rule, rows in estimates.items()},
            'e_mac_pj': cfg.e_mac_pj, 'e_ac_pj': cfg.e_ac_pj, **extra}

    write_report_files(run.output, [('architecture.json', json_file(data)), ('architecture.md', text_file(
        lambda: architecture_markdown(counts, estimates, title, details)))])
    return dict(counts=counts, estimates=estimates, output=run.output)


if __name__ == '__main__':
    run_cli(main, interrupted=INTERRUPTED)
