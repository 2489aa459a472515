"""The run folder of a training run: one run per folder, resumed only in place and only under the run's recipe,
written only once the start is known to be good.

What a start checks before it writes anything (rank 0 checks the folder; every rank checks the checkpoint):

* the output folder is not a file and can be written; a fresh run's is new or empty (a folder that holds another
  run's files is refused, with the resume command in the message);
* ``--resume PATH``: the run continues in the folder that holds PATH, whatever the ``output`` of a config file says
  (a copied or renamed run folder continues in the copy); an ``--output`` on the command line that names another
  folder is an error, and so is a PATH other than the folder's own ``last.pth.tar`` (continuing from it would
  overwrite the later epochs of that file). Every key whose :class:`~utils.config.Key` is not
  ``may_change_on_resume`` must equal the value recorded in the checkpoint (its ``args``, which ``args.yaml``
  mirrors); the message lists the keys that differ;
* the disk has room for three checkpoints (last, best, and the next last while it is written), estimated from the
  model's state, the optimizer's state and the EMA copy.

Before it writes, rank 0 claims the folder for the run's life (``utils.run.run_claim``): a folder that a running process
holds is refused, naming it. A resume of a run that has trained its whole schedule ends at once
(``utils.run.finished_run``).

Then (rank 0): the folder is created, temporary files left by a killed process are removed, ``model_best.pth.tar``
is repaired when a kill fell between writing ``last.pth.tar`` and linking it (see ``utils.run.checkpoint``), and
``args.yaml`` is written (on resume: once the first new checkpoint is saved, so it never names a recipe that the
checkpoints did not train with).
"""
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

from models import CheckpointError, read_checkpoint

from utils.config import (INVOCATION_KEYS, MAY_CHANGE_ON_RESUME, SCHEMA, Config, ConfigError, config_from_checkpoint,
                          convert, recorded_config, save_config)
from utils.errors import UserError, size_text, writing
from utils.run.checkpoint import BEST, LAST, link_or_copy
from utils.run.run_claim import LOCK_NAME, FolderInUse, claim_folder, is_claimed
from utils.training.factory import architecture_label, architecture_overrides

# Temporary files of an atomic write (``utils.run.atomic.temporary_name``; earlier versions wrote ``<name>.tmp<pid>``
# and ``<name>.tmp``): garbage once their writer is gone.
_TEMPORARY = re.compile(r'^(?:last\.pth\.tar|model_best\.pth\.tar|checkpoint-\d+\.pth\.tar|summary\.csv|args\.yaml|'
                        r'run\.json)\.tmp\d*(?:\.(?:tar|csv|yaml|json))?$')
_MAX_LISTED = 10


def _existing_ancestor(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def check_output_location(path: str, option: str = '--output', resume: bool = False) -> None:
    """``path`` is a folder, or can be created as one, and can be written (tested with a probe file, which also
    catches read-only file systems and works for root, unlike permission bits). ``resume``: ``path`` is a resumed
    run's folder, which cannot be moved with an option: the advice is to copy it."""
    if os.path.islink(path) and not os.path.exists(path):
        raise UserError(f'{option} {path} is a symbolic link to {os.readlink(path)}, which does not exist: create '
                        f'that folder first, remove the link, or choose another {option}.')
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f'{option} {path} is a file, not a folder: choose a folder name (new or empty).')
    parent = _existing_ancestor(path)
    if not os.path.isdir(parent):
        raise UserError(f'{option} {path} cannot be created: {parent} is a file, not a folder.')
    try:
        fd, probe = tempfile.mkstemp(prefix='.write-test-', dir=parent)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        if resume:
            raise UserError(f'the run folder {path} cannot be written ({parent}: {e.strerror or e}), so the run '
                            f'cannot continue there.\nCopy the folder to a writable disk and resume the copy: cp -r '
                            f'{path} NEW_FOLDER, then --resume NEW_FOLDER/{LAST} (a resumed run continues in the '
                            f'folder of its checkpoint).') from None
        raise UserError(f'{option} {path} cannot be written ({parent}: {e.strerror or e}): choose a folder on a '
                        f'writable disk with {option}.') from None


def check_fresh_output(path: str) -> None:
    """A new run writes only into a new or empty folder."""
    check_output_location(path)
    holder = is_claimed(path)
    if holder is not None:
        raise FolderInUse(_in_use(path, holder))
    _check_empty(path)


def _check_empty(path: str) -> None:
    # the claim's lock file alone is no run (a start that was killed before it wrote anything)
    entries = sorted(e for e in os.listdir(path) if e != LOCK_NAME) if os.path.isdir(path) else []
    if not entries:
        return
    shown = ', '.join(entries[:6]) + (f', ... ({len(entries)} entries)' if len(entries) > 6 else '')
    if LAST in entries:
        advice = (f'To continue that run: --resume {os.path.join(path, LAST)}. To start a new one, choose another '
                  f'--output (or leave it unset for a new timestamped folder).')
    else:
        advice = ('It holds no checkpoint (a run that stopped before its first epoch ended?): delete it, or choose '
                  'another --output (or leave it unset for a new timestamped folder).')
    raise UserError(f'--output {path} is not empty ({shown}): a run folder belongs to one run, so a new run does '
                    f'not write into it.\n{advice}')


def _in_use(path: str, holder: str) -> str:
    return (f'--output {path} is in use by another run: {holder}.\nA run folder belongs to one run: choose another '
            f'--output (or leave it unset for a new folder of its own).')


def claim_fresh_output(path: str, made: bool = False) -> None:
    """Claim the folder of a new run (``utils.run.run_claim``; ``made``: it was just created for this run), then check
    again, under the claim, that it is empty: of two runs started at once into one folder, one is refused."""
    claim_folder(path, lambda holder: _in_use(path, holder), created=made)
    _check_empty(path)


def claim_resumed_output(cfg: Config) -> None:
    """Claim a resumed run's folder: a resume of a run that is still running is refused, naming its process."""
    claim_folder(cfg.output, lambda holder: f'cannot resume {cfg.resume}: the run is still running in {cfg.output} '
                                            f'({holder}).\nWait for it to end, or stop it (kill its process; '
                                            f'then this command continues it from its last epoch).', create=False)


def save_run_config(cfg: Config) -> None:
    """Write the run's ``args.yaml`` (atomically; ``resume: null``, see :func:`start_folder`)."""
    path = os.path.join(cfg.output, 'args.yaml')
    with writing(path, 'The run has not started.' if cfg.resume is None else
                 'The checkpoints are written; the next start writes it again.'):
        save_config(Config({**cfg.to_dict(), 'resume': None}), path, header=f'architecture that runs: '
                    f'{architecture_label(cfg.model, architecture_overrides(cfg))}')


def resume_folder(cfg: Config) -> str:
    """The folder of the run that ``cfg.resume`` continues: the one holding the checkpoint file."""
    path = cfg.resume
    folder = os.path.dirname(os.path.abspath(path))
    if 'output' in cfg.command_line and cfg.output is not None and os.path.abspath(cfg.output) != folder:
        raise UserError(f'--output {cfg.output} and --resume {path} name different folders: a resumed run continues '
                        f'in the folder that holds its checkpoint ({folder}).\nDrop --output; to branch off a new run '
                        f'from this checkpoint, copy it into a new folder and resume there.')
    last = os.path.join(folder, LAST)
    if os.path.isfile(last) and not os.path.samefile(last, path):
        raise UserError(f'--resume {path} is not the run\'s {LAST}: continuing from it would overwrite {last} and '
                        f'lose the epochs after it.\nResume from {last}; to branch off from {path}, copy it into a '
                        f'new folder (as {LAST}) and resume there.')
    return folder


@dataclass
class Resume:
    """What ``--resume`` brings: the checkpoint (dropped once loaded, to free its memory), the config it records
    (None for a checkpoint of another code base), its epoch, best epoch and best metric, and its number of processes."""
    path: str
    checkpoint: Optional[dict]
    recorded: Optional[dict]
    progress: dict = field(default_factory=dict)
    world: Optional[int] = None  # the run's number of processes (None: a checkpoint of an earlier version)


def resolve_recorded_amp_dtype(checkpoint: dict) -> None:
    """A run records the autocast dtype it trained in (``amp_dtype: auto`` is resolved at the start: float16 on CUDA,
    bfloat16 on CPU), so that a resume on another device continues in that dtype instead of switching silently.
    Runs of earlier versions recorded ``auto``: their checkpoint tells which it was, as only float16 saves the
    gradient scaler's state (``amp_scaler``). Edits the checkpoint's recorded config in place."""
    args = recorded_config(checkpoint)
    if args is not None and args.get('amp', True) and args.get('amp_dtype', 'auto') == 'auto':
        checkpoint['args'] = dict(args, amp_dtype='float16' if 'amp_scaler' in checkpoint else 'bfloat16')


def open_resume(cfg: Config, argv: Sequence[str]) -> tuple:
    """``(cfg, Resume)`` for ``cfg.resume``: the checkpoint read safely (``trust_checkpoint``), and the config to run
    with. Without ``--config`` the recorded config is the base (command-line keys override it), so ``--resume PATH``
    alone continues the run as it was configured; the output folder is the checkpoint's (:func:`resume_folder`)."""
    path = cfg.resume
    if os.path.isdir(path):
        raise CheckpointError(f'--resume {path} is a folder, not a checkpoint file: resume from its {LAST}, e.g. '
                              f'--resume {os.path.join(path, LAST)}')
    if not os.path.isfile(path):
        raise CheckpointError(f'checkpoint to resume from not found: {path}\nPass the last.pth.tar of a run folder '
                              f'(relative paths start in the current directory: {os.getcwd()}).')
    checkpoint = read_checkpoint(path, trust=cfg.trust_checkpoint)
    if not isinstance(checkpoint, dict) or 'optimizer' not in checkpoint or 'epoch' not in checkpoint:
        raise CheckpointError(f'{path} holds weights only (no optimizer state or epoch), so training cannot '
                              f'continue from it.\n--resume takes the last.pth.tar of a run written by train.py; '
                              f'evaluate weights-only checkpoints with test.py --checkpoint.')
    resolve_recorded_amp_dtype(checkpoint)
    cfg = config_from_checkpoint(argv, checkpoint) or cfg
    cfg.output = resume_folder(cfg)
    progress = {k: checkpoint.get(k) for k in ('epoch', 'best_epoch', 'best_metric')}
    world = checkpoint.get('world_size')
    world = world if isinstance(world, int) else None
    return cfg, Resume(path, checkpoint, recorded_config(checkpoint), progress, world)


def _comparable(value):
    return list(value) if isinstance(value, tuple) else value


def recorded_values(recorded: Mapping, schema: Mapping = SCHEMA) -> dict:
    """The run's value of every key of ``schema``. A key the run did not record (it was added since) takes the value
    a start gives it today: its default, resolved for the run's data set where the default is null and a start
    resolves it (``utils.data.loaders.resolve_data_config``; e.g. ``eval_amp`` is true for images). So a run recorded
    before a key existed compares equal to a resume that keeps the key's default (``cfg`` is compared once resolved)."""
    # late: the data code is heavy, and only a resume needs it
    from utils.data.loaders import DATASETS, resolve_data_config
    values = {}
    for name, key in schema.items():
        value = recorded.get(name, key.default)
        try:
            value = convert(name, key, value)
        except ConfigError:  # a value an older version accepted: compare as recorded
            pass
        values[name] = value
    missing = [name for name in schema if name not in recorded]
    if missing and values.get('dataset') in DATASETS:
        resolved = Config(values)
        resolve_data_config(resolved)
        values.update({name: getattr(resolved, name) for name in missing})
    return values


def recipe_differences(recorded: Mapping, cfg: Config, schema: Mapping = SCHEMA) -> list:
    """``[(key, run's value, new value)]`` for every protected key (not ``may_change_on_resume``) whose value in
    ``cfg`` differs from the run's (:func:`recorded_values`)."""
    run = recorded_values(recorded, schema)
    differences = []
    for name, key in schema.items():
        if key.may_change_on_resume or name not in cfg:
            continue
        old, new = run[name], getattr(cfg, name)
        if _comparable(old) != _comparable(new):
            differences.append((name, old, new))
    return differences


def _global_batch(batch_size: int, world: int, steps: int) -> str:
    return f'{batch_size} x {world} x {steps} = {batch_size * world * steps}'


def check_same_recipe(recorded: Optional[Mapping], cfg: Config, world: int = 1,
                      recorded_world: Optional[int] = None) -> Optional[str]:
    """Refuse to resume under another architecture or recipe than the run's (``recorded``; None skips the check).

    The batch: ``batch_size`` (per process) is protected like any key. What the optimizer sees is the global batch,
    ``batch_size x processes x grad_accum_steps``: when the checkpoint records its number of processes
    (``recorded_world``), the global batch is compared instead of ``grad_accum_steps``, so the run may continue on
    another number of processes with the ``--grad-accum-steps`` that keeps it; returns a line for the log then.
    Without it (checkpoints of earlier versions) ``grad_accum_steps`` is compared as any key."""
    if recorded is None:
        return None
    differences = recipe_differences(recorded, cfg)
    batch_line, note, fix = None, None, ''
    if recorded_world is not None:
        differences = [d for d in differences if d[0] != 'grad_accum_steps']
        run = recorded_values(recorded)
        then = (run['batch_size'], recorded_world, run['grad_accum_steps'])
        now = (cfg.batch_size, world, cfg.grad_accum_steps)
        if then[0] * then[1] * then[2] != now[0] * now[1] * now[2]:
            batch_line = (f'  global batch (batch_size x processes x grad_accum_steps): run {_global_batch(*then)}, '
                          f'now {_global_batch(*now)}')
            batches = then[1] * then[2]  # of the run's batch_size per optimizer step, which must stay
            fix = (f'\nOn {world} process(es), --grad-accum-steps {batches // world} keeps the run\'s global batch '
                   f'({_global_batch(then[0], world, batches // world)}).' if batches % world == 0 else
                   f'\nNo --grad-accum-steps keeps the run\'s global batch with batch_size {then[0]} on {world} '
                   f'process(es): resume on a number of processes that divides {batches}.')
        elif then != now:
            note = (f'global batch as the run\'s: {_global_batch(*now)} (batch_size x processes x '
                    f'grad_accum_steps; the run had {_global_batch(*then)})')
    if not differences and batch_line is None:
        return note
    lines = [f'  {name}: run {old!r}, now {new!r}' for name, old, new in differences[:_MAX_LISTED]]
    if len(differences) > _MAX_LISTED:
        lines.append(f'  ... and {len(differences) - _MAX_LISTED} more')
    lines += [batch_line] if batch_line else []
    free = ', '.join(k for k in MAY_CHANGE_ON_RESUME if k not in INVOCATION_KEYS and k != 'epochs')
    processes = '; so may the number of processes, with the global batch kept' if recorded_world is not None else ''
    raise UserError(f'cannot resume {cfg.resume} under another recipe: these keys differ from the run\'s '
                    f'(recorded in the checkpoint):\n' + '\n'.join(lines) + '\n'
                    f'A resumed run continues the run as it was trained: drop these options (without --config the '
                    f'run\'s own config is used), or start a new run in another folder.{fix}\nOn resume only {free} '
                    f'and epochs (to extend the schedule) may change{processes}; the learning rates, the mixup switch, '
                    f'EMA and clipping with --allow-change KEY,... (recorded in the run).')


def checkpoint_size_estimate(model, optimizer, ema=None) -> int:
    """Bytes of one run checkpoint: the model's state, the optimizer's state (measured when a resume loaded it, else
    two tensors per parameter, what Adam-family optimizers keep; SGD keeps at most one), the EMA copy, plus 1 MiB."""
    def nbytes(tensors):
        return sum(t.numel() * t.element_size() for t in tensors if hasattr(t, 'element_size'))

    model_bytes = nbytes(model.state_dict().values())
    state = optimizer.state_dict()['state']
    optimizer_bytes = (nbytes(v for s in state.values() for v in s.values()) if state else
                       2 * nbytes(p for p in model.parameters() if p.requires_grad))
    ema_bytes = nbytes(ema.state_dict().values()) if ema is not None else 0
    return model_bytes + optimizer_bytes + ema_bytes + 2 ** 20


def check_free_space(folder: str, checkpoint_bytes: int, history: int = 0) -> None:
    """Room for three checkpoints (``last``, ``best`` when it is an older epoch, the next ``last`` while it is
    written) and the ``history`` epoch checkpoints of ``--checkpoint-hist``, less what the folder's checkpoints
    already take."""
    held = {}
    for name in (LAST, BEST):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            st = os.stat(path)
            held[(st.st_dev, st.st_ino)] = st.st_size
    need = (3 + history) * checkpoint_bytes - sum(held.values())
    free = shutil.disk_usage(_existing_ancestor(folder)).free
    if free < need:
        raise UserError(f'not enough free space for the run\'s checkpoints in {folder}: {size_text(free)} free, about '
                        f'{size_text(need)} needed ({3 + history} checkpoints of about {size_text(checkpoint_bytes)}: '
                        f'{LAST}, {BEST}, the next {LAST} while it is written'
                        f'{f" and {history} of --checkpoint-hist" if history else ""}).\nFree some space, or choose an '
                        f'--output on another disk.')


def leftover_temporaries(folder: str) -> list:
    """The names of temporary files of atomic writes in ``folder`` (left by a killed process)."""
    return sorted(n for n in os.listdir(folder) if _TEMPORARY.match(n)) if os.path.isdir(folder) else []


def remove_temporaries(folder: str) -> list:
    """Delete the temporary files of atomic writes that a killed process left behind; returns their names."""
    names = sorted(n for n in os.listdir(folder) if _TEMPORARY.match(n)) if os.path.isdir(folder) else []
    for name in names:
        os.remove(os.path.join(folder, name))
    return names


def best_file_epoch(folder: str) -> Optional[int]:
    """The epoch held by the folder's ``model_best.pth.tar`` (None when missing or unreadable), read cheaply (the
    tensors are memory-mapped, not read)."""
    best = os.path.join(folder, BEST)
    if not os.path.isfile(best):
        return None
    try:
        checkpoint = read_checkpoint(best, mmap=True)
        return checkpoint.get('epoch') if isinstance(checkpoint, dict) else None
    except CheckpointError:
        return None


def repair_best(folder: str, last_checkpoint: Mapping) -> Optional[str]:
    """Make ``model_best.pth.tar`` hold the best epoch that ``last.pth.tar`` records, where that is possible.

    The save order (last, then best as a link of it) means one state only can be stale after a kill: last records
    its own epoch as the best while best still holds an older one (or is missing); best is then linked to last.
    Returns a line for the log when something was repaired or cannot be, else None.
    """
    best_epoch, epoch = last_checkpoint.get('best_epoch'), last_checkpoint.get('epoch')
    if best_epoch is None or best_file_epoch(folder) == best_epoch:
        return None
    best_metric = last_checkpoint.get('best_metric')
    if best_epoch == epoch:
        link_or_copy(os.path.join(folder, LAST), os.path.join(folder, BEST))
        return f'{BEST} repaired: it now holds epoch {epoch}, the best epoch recorded in {LAST} (an earlier run ' \
               f'was stopped between writing the two)'
    return f'warning: {BEST} does not hold epoch {best_epoch}, the best epoch recorded in {LAST} (top-1 ' \
           f'{best_metric}); it is written again when an epoch beats that'


def start_folder(cfg: Config, resume: Optional[Resume]) -> list:
    """Create or tidy the run folder and write ``args.yaml``; returns lines for the log. Call on rank 0 once the
    config, checkpoint, data and output are known to be good.

    ``args.yaml`` records ``resume: null``: it is the config to rerun or resume the run with, and a recorded
    ``resume`` would make ``--config <run>/args.yaml`` of a copied folder continue the original run (``log.txt``
    records each start's checkpoint).
    """
    folder = cfg.output
    notes = []
    with writing(folder, 'Nothing was written into the run folder.'):
        os.makedirs(folder, exist_ok=True)
    if resume is not None:
        if resume.recorded is None:
            notes.append(f'note: {resume.path} records no config of this project, so the recipe was not compared')
        with writing(folder, 'The run has not started.'):
            removed = remove_temporaries(folder)
        if removed:
            notes.append(f'removed temporary files of an interrupted write: {", ".join(removed)}')
        if os.path.isfile(os.path.join(folder, LAST)):  # then it is the resumed checkpoint (resume_folder)
            with writing(os.path.join(folder, BEST), f'{LAST} is unchanged; the next start tries again.'):
                note = repair_best(folder, resume.progress)
            if note:
                notes.append(note)
    if resume is None:  # a resumed run's args.yaml follows its first new checkpoint (utils.training.main)
        save_run_config(cfg)
    return notes
