"""``scripts/energy_report.py --compare MODEL_A MODEL_B --checkpoint A --checkpoint B``: two models, the same data,
one table.

Both models are evaluated on the same batches (the same config's evaluation split, or the same synthetic inputs with
``--input random|zeros``), each in one pass that serves both counting rules (:func:`energy.estimate_energy_rules`).
The table gives, per rule, each model's MACs, ACs and energy per sample and the saving ``1 - E_A / E_B`` in
percent. When the two rows are the paper's headline pair (Spikingformer-8-768 against Spikformer-8-768 with their
published architectures, evaluated on ImageNet), the paper's figures stand beside them: 13.68 mJ against 32.07 mJ,
a saving of ``1 - 13.68 / 32.07 = 57.34%``.

Every other option is shared by both sides (``--config``, ``--data-dir``, ``--limit-batches``, ``--input`` ...);
``--checkpoint`` is given twice, in the order of the models. The sides must resolve to the same data (data set,
input size, normalisation, batches): otherwise the comparison is refused before any pass. The architecture keys
(``num_heads``, ``embed_dims``, ``depths``) of a shared ``--config`` file belong to the model that file names: the
other side gets its registered variant's own (``imagenet/imagenet.yml`` writes ``num_heads: 8`` for
Spikingformer-8-768; a variant with other heads must not inherit them silently); keys given on the command line
apply to both sides. Without
``--config``, each checkpoint written by ``train.py`` brings its own config.
"""
import os
import sys
import time
from dataclasses import asdict
from typing import List, Optional, Sequence

from utils.config import ConfigError, has_config_option, load_config

from .cli import json_file, prepare_report, report_provenance, text_file, write_report_files
from .counter import MULTISPIKE
from .estimate import estimate_energy_rules
from .paper import HEADLINE, PAPER, paper_saving
from .report import mj, si

ARCHITECTURE_KEYS = ('num_heads', 'embed_dims', 'depths')
# what both sides must share for "the same data"
SAME_DATA = ('dataset', 'img_size', 'mean', 'std', 'data_dir', 'limit_batches', 'limit_eval_batches', 'input',
             'samples', 'seed')


def split_compare_argv(argv: Sequence[str]):
    """``(models, checkpoints, common)``: the two names after ``--compare``, every ``--checkpoint`` value in order,
    and the remaining options (shared by both sides)."""
    models: List[str] = []
    checkpoints: List[str] = []
    common: List[str] = []
    i, argv = 0, list(argv)
    while i < len(argv):
        token = argv[i]
        if token.startswith('--compare=') or token.startswith('--checkpoint='):
            name, value = token.split('=', 1)
            (models if name == '--compare' else checkpoints).append(value)
            i += 1
            if name == '--compare':
                while i < len(argv) and not argv[i].startswith('-'):
                    models.append(argv[i])
                    i += 1
        elif token == '--compare':
            i += 1
            while i < len(argv) and not argv[i].startswith('-'):
                models.append(argv[i])
                i += 1
        elif token == '--checkpoint':
            if i + 1 >= len(argv) or argv[i + 1].startswith('-'):
                raise ConfigError('--checkpoint expects a path')
            checkpoints.append(argv[i + 1])
            i += 2
        else:
            common.append(token)
            i += 1
    if len(models) != 2:
        raise ConfigError(f'--compare expects two model names, got {len(models)}: {" ".join(models) or "(none)"} '
                          f'(e.g. --compare spikingformer_8_768 spikformer_8_768 --checkpoint A --checkpoint B)')
    if len(checkpoints) != 2:
        raise ConfigError(f'--compare needs one --checkpoint per model, in the order of the models; got '
                          f'{len(checkpoints)}')
    if '--no-checkpoint' in common:
        raise ConfigError('--compare compares two checkpoints; for the architecture-only report run each model with '
                          '--no-checkpoint')
    if '--model' in common:
        raise ConfigError('--compare names both models: drop --model')
    return models, checkpoints, common


def side_argv(common: Sequence[str], name: str, checkpoint: str, extra_keys: dict) -> List[str]:
    """One side's command line: the shared options, its model and checkpoint, and (with a shared ``--config`` file
    written for the other model) its registered variant's architecture instead of the file's."""
    argv = list(common) + ['--model', name, '--checkpoint', checkpoint]
    if has_config_option(common):
        shared = load_config(common, None, extra_keys=extra_keys)
        if shared.model != name:
            for key in ARCHITECTURE_KEYS:
                if key not in shared.command_line and getattr(shared, key) is not None:
                    argv += [f'--{key.replace("_", "-")}', 'null']
    return argv


def headline_pair(runs) -> bool:
    """Whether the two sides are the paper's headline pair: published architectures, evaluated on ImageNet."""
    for model_name, run in zip(HEADLINE, runs):
        row = PAPER[model_name]
        model = run.model
        actual = dict(embed_dims=getattr(model, 'embed_dims', None), depths=getattr(model, 'depths', None),
                      num_heads=getattr(model, 'num_heads', None), T=getattr(model, 'T', None),
                      num_classes=getattr(model, 'num_classes', None), img_size=run.cfg.img_size)
        if run.cfg.model != model_name or run.data != 'data' or run.cfg.dataset != 'imagenet' \
                or actual != row.architecture:
            return False
    return True


def compare_markdown(names, reports, paper: bool, details: Sequence[str] = ()) -> str:
    """One table: per rule, each model's MACs, ACs and energy per sample, and the saving of the first."""
    a_name, b_name = names
    lines = [f'# Energy: {a_name} against {b_name}', '']
    lines += [f'- {d}' for d in details]
    lines += ['- per sample, on the same inputs; saving = 1 - E(first) / E(second)',
              '- rule `mac`: layers on spike counts (sums of spikes) cost MACs (the published calculator\'s default, '
              'Nspks_max = 1); rule `ac`: they cost ACs x mean count (Nspks_max = 30). A model whose layers all read '
              '0/1 spikes (Spikingformer) has the same numbers under both', '']
    head = '| rule | model | top-1 | MAC ops | AC ops | energy | saving |' + (' paper |' if paper else '')
    lines += [head, '|' + '---|' * (head.count('|') - 1)]
    pa, pb = (PAPER[n] for n in HEADLINE) if paper else (None, None)
    for rule in MULTISPIKE:
        ra, rb = reports[0][rule], reports[1][rule]
        saving = 100 * (1 - ra.energy_mj / rb.energy_mj) if rb.energy_mj else float('nan')
        for name, r, p in ((a_name, ra, pa), (b_name, rb, pb)):
            top1 = f'{r.top1:.2f}%' if r.top1 is not None else '-'
            row = f'| {rule} | {name} | {top1} | {r.mac_ops:,.0f} | {si(r.ac_ops)} | {mj(r.energy_mj)} |'
            row += f' {saving:.2f}% |' if r is ra else ' |'
            if paper:
                # Spikingformer has no spike counts: its figure holds under both rules. Spikformer's 32.07 mJ is
                # the 'ac' rule's (under 'mac' its counted MACs alone exceed 120 mJ), and so is the saving.
                if r is ra:
                    row += f' {p.energy_mj} mJ' + (f', saving {paper_saving(pa, pb):.2f}%' if rule == 'ac' else '')
                else:
                    row += f' {p.energy_mj} mJ' if rule == 'ac' else ' -'
                row += ' |'
            lines.append(row)
    lines.append('')
    if paper:
        lines += [f'Paper: {pa.source}, {pa.energy_mj} mJ; {pb.source}, {pb.energy_mj} mJ; '
                  f'1 - {pa.energy_mj} / {pb.energy_mj} = {paper_saving(pa, pb):.2f}%. The paper\'s Spikformer figure '
                  f'can only be rule `ac`: under rule `mac` the layers on spike counts of Spikformer-8-768 alone cost '
                  f'26.4 G MACs (over 120 mJ). Spikingformer reads only 0/1 spikes: one figure for both rules.', '']
    return '\n'.join(lines)


def compare_main(argv: Sequence[str], extra_keys: dict, provenance_argv: Optional[Sequence[str]] = None) -> dict:
    names, checkpoints, common = split_compare_argv(argv)
    runs = [prepare_report(side_argv(common, name, checkpoint, extra_keys), extra_keys, 'whose energy to compare',
                           'energy')
            for name, checkpoint in zip(names, checkpoints)]
    differ = [k for k in SAME_DATA if k in runs[0].cfg and getattr(runs[0].cfg, k) != getattr(runs[1].cfg, k)]
    if differ:
        detail = '; '.join(f'{k}: {getattr(runs[0].cfg, k)!r} vs {getattr(runs[1].cfg, k)!r}' for k in differ)
        raise ConfigError(f'the two sides of --compare would see different data ({detail}). Pass one --config (and '
                          f'--data-dir) for both, or set these keys on the command line.')
    reports, seconds = [], []
    for run in runs:
        start = time.time()
        reports.append(estimate_energy_rules(run.model, run.batches, e_mac_pj=run.cfg.e_mac_pj,
                                             e_ac_pj=run.cfg.e_ac_pj, rate_average=run.cfg.rate_average,
                                             device=run.device, autocast_dtype=run.amp_dtype, rules=MULTISPIKE))
        seconds.append(round(time.time() - start, 3))
    paper = headline_pair(runs)
    for rule in MULTISPIKE:
        ra, rb = reports[0][rule], reports[1][rule]
        saving = 100 * (1 - ra.energy_mj / rb.energy_mj) if rb.energy_mj else float('nan')
        print(f'rule {rule}: {names[0]} {mj(ra.energy_mj)}, {names[1]} {mj(rb.energy_mj)} per sample: '
              f'{saving:.2f}% less' + (' (paper: 13.68 mJ vs 32.07 mJ, 57.34% less)' if paper else ''), flush=True)
    for name, rule_reports in zip(names, reports):
        for u in rule_reports['mac'].unclassified:
            print(f'not counted in {name}: {u.name or "(model)"}: {u.what}', file=sys.stderr)
    output = runs[0].output
    cfg = runs[0].cfg
    details = [f'data: `{cfg.dataset}`' + (f', {runs[0].total} batches' if runs[0].data == 'data' else
                                           f', {cfg.samples} synthetic {runs[0].data} inputs (seed {cfg.seed})')]
    details += [f'{name}: checkpoint `{c}`' for name, c in zip(names, checkpoints)]
    provenance = report_provenance('energy_report.py', provenance_argv, runs[0])
    data = {'models': list(names),
            'rules': {rule: {'reports': [r[rule].to_dict() for r in reports],
                             'saving_percent': (100 * (1 - reports[0][rule].energy_mj / reports[1][rule].energy_mj)
                                                if reports[1][rule].energy_mj else None)}
                      for rule in MULTISPIKE},
            'paper': ({'rows': {n: asdict(PAPER[n]) for n in HEADLINE},
                       'saving_percent': paper_saving(*(PAPER[n] for n in HEADLINE))} if paper else None),
            'seconds': seconds, 'provenance': provenance['provenance'],
            'checkpoints': [run.checkpoint for run in runs]}

    written = write_report_files(output, [('compare.json', json_file(data)), ('compare.md', text_file(
        lambda: compare_markdown(names, reports, paper, details)))])
    return dict(reports=reports, paper=paper, output=output, files=written, path=os.path.join(output, 'compare.md'))
