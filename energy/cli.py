"""What ``scripts/energy_report.py`` and ``scripts/spike_report.py`` share: config and checkpoint loading (the same
as ``test.py``: safe loading only, unless ``--trust-checkpoint``), the output folder (checked before the pass), the
model, the evaluation batches, and writing the report files. One code path, so both reports read checkpoints and
write their files alike."""
import itertools
import os
import sys
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence, Tuple

import torch

from utils.config import (EVALUATION_KEYS, Bounds, Config, Key, config_from_checkpoint, has_config_option, load_config,
                          recorded_config)
from utils.errors import UserError, writing
from utils.run.atomic import replace_atomically

REPORT_KEYS = {
    'limit_batches': Key(None, int, 'evaluate at most this many batches; null = the whole evaluation split',
                         nullable=True, bounds=Bounds(1)),
    'precision': Key('float32', str, "float32, as the published calculator (which ignores AMP), or 'amp': autocast "
                     "with the config's amp_dtype; the config's own amp key (a training setting) is not used here",
                     choices=('float32', 'amp')),
}


@dataclass
class ReportRun:
    """A report's resolved config, the trained model on its device, and the evaluation batches to run."""
    cfg: Config
    model: torch.nn.Module
    device: torch.device
    amp_dtype: Optional[torch.dtype]
    batches: Iterable
    total: int  # number of batches
    output: str  # the folder the report files go to (checked writable before the pass)
    checkpoint: Optional[dict] = None  # what the report files record of the checkpoint (checkpoint_record)
    data: str = 'data'  # 'data' (the evaluation split), 'random' or 'zeros' (energy.synthetic), 'none'


def checkpoint_record(path: str, checkpoint) -> dict:
    """What a report records of the checkpoint it read: the path as given, its absolute path, its SHA-256, and the
    provenance of the run that wrote it when the checkpoint records one (``checkpoint['provenance']``)."""
    from utils.run.provenance import file_sha256
    record = {'path': path, 'abspath': os.path.abspath(path), 'sha256': file_sha256(path)}
    provenance = checkpoint.get('provenance') if isinstance(checkpoint, dict) else None
    if provenance is not None:
        record['provenance'] = provenance
    return record


def report_provenance(script: str, argv: Optional[Sequence[str]], run: 'ReportRun') -> dict:
    """The ``provenance`` and ``checkpoint`` entries of a report's JSON file (``utils.run.provenance``): the command is
    ``sys.argv`` when the script runs from the shell (``argv`` None), else ``scripts/<script> argv...``."""
    from utils.run.provenance import run_provenance
    command = None if argv is None else [os.path.join('scripts', script), *argv]
    return {'provenance': run_provenance(command, device=run.device), 'checkpoint': run.checkpoint}


def prepare_report(argv, extra_keys: dict, purpose: str, desc: str) -> ReportRun:
    """Resolve the config (``--config``, or the one a ``train.py`` checkpoint carries), check the output folder,
    build the model with the checkpoint's weights and the evaluation loader, limited to ``--limit-batches``.
    ``purpose`` completes the message for a missing ``--checkpoint`` ("whose energy to estimate"); ``desc`` labels
    the progress bar and names the default output folder (``output/<desc>/...``).

    When ``extra_keys`` has them (``scripts/energy_report.py``): ``--input random|zeros`` feeds ``--samples``
    synthetic inputs (``energy.synthetic``) instead of the evaluation split, and ``--no-checkpoint`` builds the
    untrained model of the config for the architecture-only report (one zero input; no checkpoint, no data)."""
    from models import read_checkpoint
    from utils.data.loaders import DVS_DATASETS, build_eval_loader, resolve_data_config
    from utils.training.distributed import select_device
    from utils.training.factory import build_model
    from utils.training.main import amp_setup, default_output, load_trained_model
    from utils.run.run_folder import check_output_location

    cfg = load_config(argv, None, extra_keys=extra_keys, help_keys=EVALUATION_KEYS + tuple(extra_keys))
    no_checkpoint = 'no_checkpoint' in cfg and cfg.no_checkpoint
    data = 'none' if no_checkpoint else cfg.input if 'input' in cfg else 'data'
    check_synthetic_keys(cfg, data)
    checkpoint = None
    if not no_checkpoint:
        if cfg.checkpoint is None:
            raise UserError(f'--checkpoint PATH is required: the .pth.tar file {purpose} (a run\'s '
                            f'model_best.pth.tar, or a published checkpoint with the --config of its data set)'
                            + ('; without one, --no-checkpoint gives the architecture-only report.'
                               if 'no_checkpoint' in cfg else '.'))
        checkpoint = read_checkpoint(cfg.checkpoint, trust=cfg.trust_checkpoint)
        if not has_config_option(argv) and recorded_config(checkpoint) is None:
            raise UserError(f'{cfg.checkpoint} does not carry its training config: pass the config of its data set '
                            f'and model with --config (e.g. imagenet/imagenet.yml for the official 8-768).')
        cfg = config_from_checkpoint(argv, checkpoint, extra_keys, evaluation=True) or cfg
    device = select_device(cfg)
    resolve_data_config(cfg)
    amp_dtype = None
    if cfg.precision == 'amp':
        cfg.amp = True
        amp_dtype, _ = amp_setup(cfg, device)
    output = cfg.output or default_output(cfg, desc)
    check_output_location(output)
    if checkpoint is None:
        model, record = build_model(cfg).to(device), None
    else:
        model, record = load_trained_model(cfg, checkpoint, device), checkpoint_record(cfg.checkpoint, checkpoint)
    if data == 'data':
        loader = build_eval_loader(cfg, device=device)
        limit = cfg.limit_batches if cfg.limit_batches is not None else cfg.limit_eval_batches
        batches = loader if limit is None else itertools.islice(loader, limit)
        total = len(loader) if limit is None else min(limit, len(loader))
    else:
        from energy.synthetic import input_shape, synthetic_batches
        events = cfg.dataset in DVS_DATASETS
        shape = input_shape(model, cfg.img_size, events)
        samples = 1 if data == 'none' else cfg.samples
        batches = synthetic_batches(shape, 'zeros' if data == 'none' else data, samples, cfg.val_batch_size,
                                    cfg.seed, events)
        total = len(batches)
    if sys.stderr.isatty() and data != 'none':
        from tqdm import tqdm
        batches = tqdm(batches, total=total, desc=desc, dynamic_ncols=True)
    return ReportRun(cfg, model, device, amp_dtype, batches, total, output, checkpoint=record, data=data)


def check_synthetic_keys(cfg: Config, data: str) -> None:
    """Refuse combinations that would silently be ignored, before anything runs."""
    from utils.config import ConfigError
    given = cfg.command_line
    if data == 'none' and cfg.checkpoint is not None:
        raise ConfigError('--no-checkpoint and --checkpoint exclude each other: the architecture-only report uses no '
                          'weights. Drop one of them.')
    if data == 'none' and 'input' in given:
        raise ConfigError('--no-checkpoint feeds no input: drop --input (it is for a checkpoint without data).')
    if data == 'data' and 'input' in cfg and 'samples' in given:  # spike_report's --samples is another key
        raise ConfigError('--samples sets how many synthetic inputs --input random|zeros feeds; with the data set '
                          'use --limit-batches.')
    if data != 'none' and 'assume_rate' in given:
        raise ConfigError('--assume-rate belongs to the architecture-only report: add --no-checkpoint (with a '
                          'checkpoint, firing rates are measured, not assumed).')


def write_report_files(output: str, files: Sequence[Tuple[str, Callable[[str], None]]]) -> list:
    """Write ``files`` (``(name, write(path))`` pairs) into ``output`` in order, naming each on the console.

    Each file is written atomically (``utils.run.atomic``), so a failed write leaves no half file; the failure is a
    one-screen error saying which files were written and which were not (the caller prints its totals first, so a
    finished pass is never lost without a word)."""
    written = []
    for name, write in files:
        path = os.path.join(output, name)
        done = ', '.join(os.path.basename(p) for p in written) or 'nothing'
        todo = ', '.join(n for n, _ in files[len(written):])
        with writing(path, f'The numbers printed above were not saved in {todo}; written: {done}. Free some space '
                           f'or pass another --output.'):
            os.makedirs(output, exist_ok=True)
            replace_atomically(path, write)
        written.append(path)
        print(f'wrote {path}')
    return written


def json_file(data) -> Callable[[str], None]:
    """A :func:`write_report_files` writer of ``data`` as indented JSON."""
    def write(path: str) -> None:
        import json
        with open(path, 'w') as f:
            json.dump(data, f, indent=2)
    return write


def text_file(make_text: Callable[[], str]) -> Callable[[str], None]:
    """A :func:`write_report_files` writer of the text ``make_text()`` returns (made when the file is written)."""
    def write(path: str) -> None:
        with open(path, 'w') as f:
            f.write(make_text())
    return write


def model_details(run: ReportRun) -> list:
    """Lines for a report's Markdown header: model, checkpoint and config, batches and device."""
    cfg, model = run.cfg, run.model
    amp = f', autocast {str(run.amp_dtype).replace("torch.", "")}' if run.amp_dtype else ''
    return [f'model `{cfg.model}` (T={model.T}, depth {model.depths}, dim {model.embed_dims}, '
            f'{model.num_heads} heads), data set `{cfg.dataset}`',
            f'checkpoint `{cfg.checkpoint}`{" (EMA weights)" if cfg.use_ema else ""}, config '
            + (f'`{cfg.source}`' if cfg.source else 'the one saved in the checkpoint'),
            f'{run.total} batch{"es" if run.total != 1 else ""} on {run.device}{amp}']
