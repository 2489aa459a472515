"""Look at the spikes of a checkpoint: firing rates, firing maps and attention maps, from one evaluation pass.

    python scripts/spike_report.py --checkpoint PATH [--config CONFIG] [--data-dir DIR] --output DIR
        [--limit-batches N] [--samples 2] [--precision float32|amp] [--key value ...]

Config and checkpoint are read exactly as by ``scripts/energy_report.py`` (``energy.cli``): a checkpoint written by
``train.py`` brings its own config; a published one needs the ``--config`` of its data set. Images and event data
alike. Writes into ``--output``:

* ``spikes.json``: per neuron (by module name, network order): firing rate per time step and overall, fractions of
  silent and always-firing channels, the layers reading its spikes; the first sample's Q/K/V rates per head; the
  ``provenance`` of the report (``utils.run.provenance``) and the ``checkpoint`` (path, SHA-256, the training run's
  provenance when the checkpoint records one);
* ``spikes.md``: the same as tables;
* ``firing_rates.png``: neuron x time step heat map of firing rates, with the overall rates;
* ``firing_maps.png``: for the first ``--samples`` samples, the input and the tokenizer's firing maps per time step;
* ``attention.png``: per block, ``Q K^T`` per head of the first sample and its Q/K/V firing rates.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the repository root, for `models`, `utils` and `energy`

from utils.errors import exit_on_interrupt, run_cli  # noqa: E402  (first: Ctrl-C is one line from here)

INTERRUPTED = 'interrupted; nothing was written'
with exit_on_interrupt(INTERRUPTED):
    import time

    from energy.cli import (REPORT_KEYS, json_file, model_details, prepare_report, report_provenance, text_file,
                            write_report_files)
    from utils.config import Bounds, Key

EXTRA_KEYS = {
    **REPORT_KEYS,
    'samples': Key(2, int, 'how many samples (the first ones) get firing maps in firing_maps.png',
                   bounds=Bounds(1, 16)),
}


def main(argv=None) -> dict:
    from energy.report import percent
    from energy.spike_plots import plot_attention, plot_firing_maps, plot_firing_rates
    from energy.spikes import record_spikes

    run = prepare_report(list(sys.argv[1:] if argv is None else argv), EXTRA_KEYS,
                         'whose spikes to record', 'spikes')
    cfg, model = run.cfg, run.model
    start = time.time()
    report = record_spikes(model, run.batches, samples=cfg.samples, device=run.device,
                           autocast_dtype=run.amp_dtype)
    seconds = time.time() - start

    title = f'{cfg.model} on {cfg.dataset}'
    top1 = f', top-1 {report.top1:.2f}%' if report.top1 is not None else ''
    mean = sum(n.rate for n in report.neurons) / len(report.neurons)
    print(f'{title} ({report.samples} samples{top1}): {len(report.neurons)} neurons, mean firing rate '
          f'{percent(mean)}, lowest {percent(min(n.rate for n in report.neurons))}, highest '
          f'{percent(max(n.rate for n in report.neurons))}', flush=True)
    info = dict(model=cfg.model, dataset=cfg.dataset, config=cfg.source, checkpoint=cfg.checkpoint,
                use_ema=cfg.use_ema, time_steps=model.T, batches=run.total, device=str(run.device),
                amp_dtype=str(run.amp_dtype).replace('torch.', '') if run.amp_dtype else None,
                seconds=round(seconds, 3))

    extra = report_provenance('spike_report.py', argv, run)

    files = [('spikes.json', json_file({**report.to_dict(), 'run': info, **extra})),
             ('spikes.md', text_file(lambda: report.to_markdown(title=f'Spikes: {title}', details=model_details(run)))),
             ('firing_rates.png', lambda path: plot_firing_rates(report, path, title=title))]
    if report.maps:
        files.append(('firing_maps.png', lambda path: plot_firing_maps(report, path, title=title)))
    if report.attention:
        files.append(('attention.png', lambda path: plot_attention(report, path, title=title)))
    output = run.output
    written = write_report_files(output, files)
    return dict(report=report, output=output, files=written)


if __name__ == '__main__':
    run_cli(main, interrupted=INTERRUPTED)
