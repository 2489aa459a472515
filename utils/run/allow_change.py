"""Deliberate changes on resume: ``--resume RUN/last.pth.tar --lr 1e-4 --allow-change lr``.

A resume refuses every recipe key that differs from the run's (``utils.run.run_folder.check_same_recipe``), so that a
run is never continued under another recipe by accident. ``--allow-change`` names, comma-separated, keys that may
differ this once. Only keys whose change means something in the middle of a run may be named (:data:`ALLOWED`: the
learning-rate values, the mixup switch, EMA, gradient clipping); the architecture, the data and the batch shape are
refused each with its reason (:data:`REFUSED`), and so is any other recipe key. Keys that may change on every resume
anyway (workers, logging, limits, epochs) need no ``--allow-change``.

Each change is recorded: a line in ``log.txt``, and an entry ``{epoch, key, old, new}`` in the ``changes`` list
every later checkpoint of the run carries, which the start line of every later resume repeats. Everything else
stays exact: the optimizer state, the EMA and the gradient scaler are restored as on any resume, and the schedule is
rebuilt from the new values (it is created before the optimizer state is loaded), so the run continues exactly as
a run that had these values from that epoch on.
"""
import difflib
from typing import List, Mapping, Optional, Sequence, Tuple

from utils.config import SCHEMA, Config, ConfigError
from utils.run.run_folder import recipe_differences

ALLOWED = {
    'lr': 'peak learning rate', 'min_lr': 'final learning rate', 'warmup_lr': 'warmup start learning rate',
    'mixup_off_epoch': 'mixup switch', 'model_ema': 'EMA on/off (switched on, it starts from the current weights)',
    'model_ema_decay': 'EMA decay', 'clip_grad': 'gradient clipping', 'clip_mode': 'gradient clipping',
}
_ARCHITECTURE = 'it defines the architecture the checkpoint\'s weights belong to; fine-tune into a new run with ' \
                '--initial-checkpoint instead'
_DATA = 'it defines the data the run learns from (inputs, classes or normalisation); fine-tune into a new run with ' \
        '--initial-checkpoint instead'
_BATCH = 'it shapes every optimizer step (the global batch); a run on another number of processes keeps the global ' \
         'batch with --grad-accum-steps, without --allow-change'
_OPTIMIZER = 'the optimizer state in the checkpoint belongs to the run\'s optimizer and its settings'
_SCHEDULE = 'it moves the schedule\'s phases under the epochs already trained; change the learning-rate values instead'
REFUSED = {
    **dict.fromkeys(('model', 'num_classes', 'time_steps', 'num_heads', 'embed_dims', 'depths', 'sync_bn'),
                    _ARCHITECTURE),
    **dict.fromkeys(('dataset', 'dataset_name', 'img_size', 'mean', 'std', 'interpolation', 'crop_pct', 'scale',
                     'ratio', 'hflip', 'color_jitter', 'aa', 'reprob', 'remode', 'recount', 'dvs_augment'), _DATA),
    **dict.fromkeys(('batch_size', 'grad_accum_steps'), _BATCH),
    **dict.fromkeys(('opt', 'opt_eps', 'weight_decay', 'amp', 'amp_dtype'), _OPTIMIZER),
    **dict.fromkeys(('sched', 'warmup_epochs', 'cooldown_epochs'), _SCHEDULE),
}
_OTHER = 'it is part of the recipe that is not meaningful to change in the middle of a run'


def allowed_keys(cfg: Config) -> List[str]:
    """The keys of ``--allow-change`` (``-`` or ``_``, comma-separated), each checked: only with ``--resume``, known,
    and in :data:`ALLOWED` (or free to change anyway); otherwise a ConfigError with the reason."""
    if not cfg.allow_change:
        return []
    if not cfg.resume:
        raise ConfigError('--allow-change applies to --resume (keys that may differ from the resumed run\'s); a new '
                          'run takes any value without it.\nFix: drop --allow-change, or add --resume '
                          'RUN/last.pth.tar.')
    names = [n.strip().lstrip('-').replace('-', '_') for n in cfg.allow_change.split(',') if n.strip()]
    for name in names:
        if name not in SCHEMA:
            match = difflib.get_close_matches(name, list(SCHEMA), n=1, cutoff=0.5)
            raise ConfigError(f'--allow-change {name}: no such key{f" (did you mean {match[0]!r}?)" if match else ""}.')
        if name in ALLOWED or SCHEMA[name].may_change_on_resume:
            continue
        raise ConfigError(f'--allow-change {name}: {name} cannot change on resume: {REFUSED.get(name, _OTHER)}.\n'
                          f'Keys that may: {", ".join(ALLOWED)}.')
    return names


def apply_allowed_changes(recorded: Optional[Mapping], cfg: Config, epoch: int) -> Tuple[Optional[dict], list]:
    """``(recorded config with the allowed changes applied, [change entries])``: the recorded config to compare the
    rest of the recipe with (``check_same_recipe``), and ``{epoch, key, old, new}`` for each allowed key whose
    value differs from the run's."""
    names = allowed_keys(cfg)
    if recorded is None or not names:
        return (dict(recorded) if recorded is not None else None), []
    changes = [dict(epoch=epoch, key=name, old=_plain(old), new=_plain(new))
               for name, old, new in recipe_differences(recorded, cfg) if name in names]
    return dict(recorded, **{c['key']: c['new'] for c in changes}), changes


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def describe(changes: Sequence[Mapping]) -> str:
    """``epoch 2: lr 0.0005 -> 0.0001; ...`` for a log line."""
    return '; '.join(f'epoch {c["epoch"]}: {c["key"]} {c["old"]!r} -> {c["new"]!r}' for c in changes)
