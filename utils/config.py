"""Configuration: one schema, a YAML file, then ``--key value`` overrides from the command line.

Every key of every entry point is declared once, in :data:`SCHEMA`, with its default, type and a line of help; a
script may add its own keys (``extra_keys``). Precedence: schema defaults < YAML file (``--config PATH``, else the
script's default file) < command line. Unknown keys, in the file or on the command line, are errors that name the
closest known key, so a typo never silently trains with a default.

Command line: ``--key value`` or ``--key=value``; ``-`` and ``_`` are equivalent in names (``--batch-size``,
``--batch_size``); ``-T`` is ``--time-steps``, ``-b`` ``--batch-size``, ``-j`` ``--workers`` (timm's); booleans accept
``--flag``, ``--flag true|false`` and ``--no-flag``;
lists take several values (``--mean 0.5 0.5 0.5``); ``null`` sets a nullable key to None.
"""
import dataclasses
import difflib
import math
import os
import sys
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import yaml

from models.neuron import BACKENDS as NEURON_BACKENDS

from utils.errors import UserError
from utils.run.atomic import replace_atomically


class ConfigError(UserError):
    """A config file or command line that does not fit the schema."""


@dataclass(frozen=True)
class Bounds:
    """The allowed values of a number: ``lo`` <= value <= ``hi`` (None = no bound; ``lo_open``/``hi_open`` exclude
    the bound itself). ``str()`` is the range as the error messages show it, e.g. ``in [0, 1)`` or ``> 0``."""
    lo: Optional[float] = None
    hi: Optional[float] = None
    lo_open: bool = False
    hi_open: bool = False

    def __contains__(self, value) -> bool:
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)

    def __str__(self) -> str:
        lo, hi = (x if x is None or x != int(x) else int(x) for x in (self.lo, self.hi))  # 1, not 1.0
        if lo is not None and hi is not None:
            return f'in {"(" if self.lo_open else "["}{lo}, {hi}{")" if self.hi_open else "]"}'
        if lo is not None:
            return f'{">" if self.lo_open else ">="} {lo}'
        return f'{"<" if self.hi_open else "<="} {hi}' if hi is not None else 'any number'


POSITIVE = Bounds(0, lo_open=True)  # > 0 (a float)
ONE_OR_MORE = Bounds(1)             # >= 1 (a count)
NON_NEGATIVE = Bounds(0)            # >= 0
PROBABILITY = Bounds(0, 1)          # in [0, 1]


@dataclass(frozen=True)
class Key:
    """One config key: default, type (bool, int, float, str or 'floats' for a list of numbers), help.

    ``bounds`` limits a number (each number of a 'floats' key); ``finite`` (the default) refuses NaN and infinity
    in float keys. Both are checked by :func:`load_config` on the resolved values, whatever their origin.

    ``may_change_on_resume``: whether ``--resume`` accepts a value other than the run's. False by default, so every
    key of the architecture or the recipe, including keys added later, is protected: a resumed run refuses to
    continue under another value (see :data:`MAY_CHANGE_ON_RESUME`).
    """
    default: Any
    kind: Any
    help: str = ''
    nullable: bool = False
    choices: tuple = ()
    length: Optional[int] = None  # for 'floats'
    bounds: Optional[Bounds] = None
    finite: bool = True
    may_change_on_resume: bool = False


def _k(default, kind, help='', **kw) -> Key:
    return Key(default, kind, help, **kw)


FLOATS = 'floats'
DATASET_NAMES = ('cifar10', 'cifar100', 'imagenet', 'digits', 'dvs128-gesture', 'cifar10-dvs', 'folder')

SCHEMA = {
    # model
    'model': _k('spikingformer_cifar_4_384', str, 'registered timm model name'),
    'num_classes': _k(None, int, 'null = the dataset\'s number of classes', nullable=True, bounds=Bounds(2)),
    'time_steps': _k(4, int, 'simulation time steps T (alias -T)', bounds=ONE_OR_MORE),
    'num_heads': _k(None, int, 'null = the variant\'s default', nullable=True, bounds=ONE_OR_MORE),
    'embed_dims': _k(None, int, 'null = the variant\'s default', nullable=True, bounds=ONE_OR_MORE),
    'depths': _k(None, int, 'number of encoder blocks; null = the variant\'s default', nullable=True,
                 bounds=ONE_OR_MORE),
    'neuron_backend': _k('auto', str, 'LIF backend (see models.neuron)', choices=NEURON_BACKENDS),
    # data
    'dataset': _k('cifar10', str, 'data set', choices=DATASET_NAMES),
    'data_dir': _k(None, str, 'data folder; null = data/<dataset>', nullable=True),
    'dataset_download': _k(False, bool, 'download the data set into data_dir if missing (CIFAR)'),
    'img_size': _k(None, int, 'input size; null = the dataset\'s', nullable=True, bounds=ONE_OR_MORE),
    'batch_size': _k(64, int, 'training batch size per process', bounds=ONE_OR_MORE),
    'val_batch_size': _k(None, int, 'evaluation batch size; null = batch_size', nullable=True, bounds=ONE_OR_MORE),
    'workers': _k(4, int, 'data loading worker processes per process (0 = in the main process)',
                  bounds=NON_NEGATIVE),
    'mean': _k(None, FLOATS, 'normalisation mean; null = the dataset\'s', nullable=True, length=3),
    'std': _k(None, FLOATS, 'normalisation std; null = the dataset\'s', nullable=True, length=3, bounds=POSITIVE),
    'interpolation': _k('bicubic', str, 'resize interpolation', choices=('bicubic', 'bilinear', 'nearest')),
    'crop_pct': _k(1.0, float, 'evaluation centre-crop fraction', bounds=Bounds(0, 1, lo_open=True)),
    'scale': _k((1.0, 1.0), FLOATS, 'random-resized-crop area range', length=2, bounds=Bounds(0, 1, lo_open=True)),
    'ratio': _k((1.0, 1.0), FLOATS, 'random-resized-crop aspect range (the published argparse default (1, 1): with '
                'scale (1, 1), the centre square of the short side)', length=2, bounds=POSITIVE),
    'hflip': _k(0.5, float, 'horizontal flip probability', bounds=PROBABILITY),
    'color_jitter': _k(0.0, float, 'colour jitter strength (timm ignores it when aa is set)', bounds=NON_NEGATIVE),
    'aa': _k(None, str, 'RandAugment/AutoAugment policy, e.g. rand-m9-n1-mstd0.4-inc1; null = off', nullable=True),
    'aa_ops': _k('timm', str, 'operations RandAugment draws from: timm (all of the policy\'s) or spikformer (the 5 of '
                 'the published Spikformer CIFAR code; utils/data/rand_augment_ops.py)',
                 choices=('timm', 'spikformer')),
    'reprob': _k(0.25, float, 'random erasing probability', bounds=PROBABILITY),
    'remode': _k('const', str, 'random erasing fill', choices=('const', 'rand', 'pixel')),
    'recount': _k(1, int, 'random erasing count', bounds=ONE_OR_MORE),
    'dvs_augment': _k(True, bool, 'per-sample event-frame augmentation (DVS data sets)'),
    # mixup and loss
    'mixup': _k(0.0, float, 'mixup alpha (0 = off)', bounds=NON_NEGATIVE),
    'cutmix': _k(0.0, float, 'cutmix alpha (0 = off)', bounds=NON_NEGATIVE),
    'cutmix_minmax': _k(None, FLOATS, 'cutmix box ratio range; null = from alpha', nullable=True, length=2,
                        bounds=Bounds(0, 1, lo_open=True)),
    'mixup_prob': _k(1.0, float, 'probability of mixing a batch', bounds=PROBABILITY),
    'mixup_switch_prob': _k(0.5, float, 'probability of cutmix instead of mixup when both are on',
                            bounds=PROBABILITY),
    'mixup_mode': _k('batch', str, 'mixup granularity', choices=('batch', 'pair', 'elem')),
    'mixup_off_epoch': _k(None, int, 'turn mixup/cutmix off from this epoch on; null = never', nullable=True,
                          bounds=NON_NEGATIVE),
    'smoothing': _k(0.1, float, 'label smoothing', bounds=Bounds(0, 1, hi_open=True)),
    # optimisation
    'opt': _k('adamw', str, 'timm optimizer name'),
    'opt_eps': _k(1e-8, float, 'optimizer epsilon', bounds=POSITIVE),
    'weight_decay': _k(0.06, float, 'weight decay (not applied to biases and normalisation)', bounds=NON_NEGATIVE),
    'lr': _k(5e-4, float, 'peak learning rate (not scaled with the batch size)', bounds=POSITIVE),
    'sched': _k('cosine', str, 'timm scheduler name, stepped once per epoch'),
    'epochs': _k(300, int, 'epochs of the schedule (cooldown_epochs follow)', bounds=ONE_OR_MORE),
    'cooldown_epochs': _k(10, int, 'epochs at min_lr after the schedule', bounds=NON_NEGATIVE),
    'warmup_epochs': _k(20, int, 'linear warmup epochs inside the schedule', bounds=NON_NEGATIVE),
    'warmup_lr': _k(1e-5, float, 'learning rate at the start of the warmup', bounds=NON_NEGATIVE),
    'min_lr': _k(1e-5, float, 'learning rate at the end of the schedule', bounds=NON_NEGATIVE),
    'grad_accum_steps': _k(1, int, 'batches per optimizer step (gradient accumulation); global batch = batch_size x '
                           'processes x grad_accum_steps', bounds=ONE_OR_MORE),
    'amp': _k(True, bool, 'automatic mixed precision'),
    'amp_dtype': _k('auto', str, 'auto = float16 (with a gradient scaler) on CUDA, bfloat16 on CPU; float16 on CPU '
                    'runs the CUDA path (with a scaler), slower than bfloat16 there',
                    choices=('auto', 'float16', 'bfloat16')),
    'eval_amp': _k(None, bool, 'evaluate under the AMP autocast (when amp is on); null = as published for the data '
                   'set: yes for images, no (float32) for event data', nullable=True),
    'model_ema': _k(False, bool, 'keep an exponential moving average of the weights'),
    'model_ema_decay': _k(0.9998, float, 'EMA decay per step', bounds=PROBABILITY),
    # run
    'seed': _k(42, int, 'random seed (each process and epoch derives its own)', bounds=Bounds(0, 2 ** 31 - 1)),
    'device': _k('auto', str, 'auto = CUDA when available', choices=('auto', 'cpu', 'cuda')),
    'threads': _k(None, int, 'CPU threads per process (torch.set_num_threads); null = PyTorch\'s default',
                  nullable=True, bounds=ONE_OR_MORE),
    'output': _k(None, str, 'run folder; null = a new output/<train|test>/<time>-<dataset>-<model>-<suffix>',
                 nullable=True),
    'resume': _k(None, str, 'continue training from this checkpoint (last.pth.tar of a run)', nullable=True),
    'initial_checkpoint': _k(None, str, 'start a new run from this checkpoint\'s weights (fine-tuning; the head is '
                             're-initialised when the class count differs)', nullable=True),
    'checkpoint': _k(None, str, 'checkpoint to evaluate (test.py)', nullable=True),
    'use_ema': _k(False, bool, 'take the EMA weights of the checkpoint (test.py --checkpoint, --initial-checkpoint)'),
    'log_interval': _k(50, int, 'batches between progress lines when the output is not a terminal (and at least one '
                       'line a minute)', bounds=ONE_OR_MORE),
    'limit_train_batches': _k(None, int, 'train on at most this many batches per epoch; null = all', nullable=True,
                              bounds=ONE_OR_MORE),
    'limit_eval_batches': _k(None, int, 'evaluate at most this many batches; null = all', nullable=True,
                             bounds=ONE_OR_MORE),
    'dist_bn': _k('broadcast', str, 'BatchNorm statistics every rank evaluates with (several processes): broadcast '
                  '= rank 0\'s, as the published runs (DDP broadcasts them); reduce = their average over ranks',
                  choices=('broadcast', 'reduce')),
    'trust_checkpoint': _k(False, bool, 'load a checkpoint that holds pickled Python objects beyond weights and plain '
                           'values (unpickling them can run code: only for files you trust)'),
    'local_rank': _k(0, int, 'set by torch.distributed.launch (--local-rank); the LOCAL_RANK variable wins',
                     bounds=NON_NEGATIVE),
}
# The keys a resumed run may change: where the data lie and how they are loaded, the device and threads, logging,
# limits, the invocation's own keys, and `epochs` (to extend a run). Everything else defines the architecture or the
# recipe. (Set here rather than on each line above, so that this policy reads in one place.)
MAY_CHANGE_ON_RESUME = ('data_dir', 'dataset_download', 'val_batch_size', 'workers', 'neuron_backend', 'epochs',
                        'device', 'threads', 'output', 'resume', 'checkpoint', 'use_ema', 'log_interval',
                        'limit_train_batches', 'limit_eval_batches', 'trust_checkpoint', 'local_rank')
for _name in MAY_CHANGE_ON_RESUME:
    SCHEMA[_name] = dataclasses.replace(SCHEMA[_name], may_change_on_resume=True)
# Memory and preemption (docs/preemption.md). None of them changes a number the run computes, so a resume may change
# each (e.g. add --grad-checkpointing to continue on a smaller GPU).
SCHEMA.update(
    grad_checkpointing=_k(False, bool, 'recompute each encoder block and tokenizer stage in backward instead of '
                          'keeping its activations: less memory, more time, the same numbers (timm\'s flag)',
                          may_change_on_resume=True),
    checkpoint_interval=_k(None, float, 'minutes between mid-epoch saves of the whole run state to last.pth.tar (at an '
                           'optimizer step); null = at epoch ends only (SIGUSR1/SIGTERM always save, then stop)',
                           nullable=True, bounds=POSITIVE, may_change_on_resume=True),
    memory_check=_k(True, bool, 'before the first batch, refuse a run whose estimated step memory exceeds the '
                    'device\'s free memory (utils.training.memory_estimate)', may_change_on_resume=True),
)
# The keys of one invocation rather than of the run: never taken from the config a checkpoint records.
INVOCATION_KEYS = ('output', 'resume', 'checkpoint', 'use_ema', 'trust_checkpoint', 'local_rank')
# The keys that name files or folders: a leading `~` is expanded wherever the value comes from (a quoted path, a
# `--key=~/x` or a YAML file, which no shell expands).
PATH_KEYS = ('data_dir', 'output', 'resume', 'initial_checkpoint', 'checkpoint')
# Recorded keys that a checkpoint does not pass on to an evaluation (test.py, the report scripts): whether to download
# is the command line's choice there, never the training run's (see config_from_checkpoint).
TRAINING_ONLY_KEYS = ('dataset_download',)
ALIASES = {'T': 'time_steps'}
# The keys an evaluation reads (test.py, scripts/energy_report.py, scripts/spike_report.py:
# utils.training.main.test_main and energy.cli.prepare_report): the checkpoint, the architecture, the evaluation data
# and loader, precision, device and output. Their --help lists only these (and the script's own keys); a training
# config's other keys are still accepted, since a checkpoint or a published YAML file carries them, and have no effect
# there.
EVALUATION_KEYS = ('checkpoint', 'use_ema', 'trust_checkpoint', 'output', 'model', 'num_classes', 'time_steps',
                   'num_heads', 'embed_dims', 'depths', 'neuron_backend', 'dataset', 'data_dir', 'dataset_download',
                   'img_size', 'batch_size', 'val_batch_size', 'workers', 'mean', 'std', 'interpolation', 'crop_pct',
                   'amp', 'amp_dtype', 'eval_amp', 'limit_eval_batches', 'device', 'threads', 'dataset_name')
TEST_KEYS = ('results_file',)  # test.py's own (timm's validate.py --results-file)
# timm's train.py/validate.py flags (issue 24; docs/timm.md maps every one). Kept in one block so that the policy and
# the merge stay local: the keys, their short forms, the flags that take an optional value, and the reasons why a
# timm flag deliberately does not exist here.
SCHEMA.update({
    'experiment': _k(None, str, 'run folder name under output/train/ (timm\'s --experiment); null = '
                     '<time>-<dataset>-<model>', nullable=True, may_change_on_resume=True),
    'clip_grad': _k(None, float, 'gradient clipping value (timm\'s --clip-grad); null = off, as published',
                    nullable=True, bounds=POSITIVE),
    'clip_mode': _k('norm', str, 'what clip_grad bounds: the global norm, each value, or adaptive (agc)',
                    choices=('norm', 'value', 'agc')),
    'sync_bn': _k(False, bool, 'SyncBatchNorm over the processes of a distributed run (off as published)'),
    'checkpoint_hist': _k(0, int, 'also keep the last N epoch checkpoints (checkpoint-<epoch>.pth.tar) beside last '
                          'and best; 0 = none', bounds=NON_NEGATIVE, may_change_on_resume=True),
    'log_wandb': _k(False, bool, 'log the epoch metrics to Weights & Biases (needs `pip install wandb`)',
                    may_change_on_resume=True),
    'channels_last': _k(False, bool, 'channels-last memory format for the model and the images (same numbers up to '
                        'float rounding)', may_change_on_resume=True),
    'torchcompile': _k(None, str, 'torch.compile the model with this backend (bare --torchcompile = inductor); '
                       'null = off', nullable=True, may_change_on_resume=True),
    'smoke': _k(False, bool, 'smoke test: 1 epoch (unless --epochs), 2 training and 2 evaluation batches (unless '
                '--limit-train-batches/--limit-eval-batches)', may_change_on_resume=True),
    'allow_change': _k(None, str, 'on --resume: comma-separated keys allowed to differ from the run\'s (e.g. lr); '
                       'recorded in the run', nullable=True, may_change_on_resume=True),
    'dataset_name': _k(None, str, 'name of a --dataset folder for logs, run folder and reports; null = the '
                       'folder\'s name', nullable=True),
    'results_file': _k(None, str, 'test.py: append one row per evaluated checkpoint to this .csv or .json file',
                       nullable=True, may_change_on_resume=True),
})
INVOCATION_KEYS += ('experiment', 'allow_change', 'results_file', 'smoke')
ALIASES.update(b='batch_size', j='workers')
# Flags that may be given without a value, and the value that means.
BARE_VALUES = {'torchcompile': 'inductor'}
# timm flags that deliberately do not exist here, with the reason (shown instead of "unknown key").
ABSENT_FLAGS = {
    'lr_base': 'the published recipes never scale the learning rate with the batch size: --lr is the peak '
               'learning rate as published, whatever the batch',
    'lr_base_size': 'the published recipes never scale the learning rate with the batch size (--lr is used as is)',
    'lr_base_scale': 'the published recipes never scale the learning rate with the batch size (--lr is used as is)',
    'pretrained': 'no weights are downloadable through timm: start from an official checkpoint with '
                  '--initial-checkpoint PATH (see docs/timm.md)',
    'drop_path': 'the published model applies no stochastic depth (its drop_path_rate is accepted and ignored)',
    'drop': 'the published model applies no dropout (its drop_rate is accepted and ignored)',
    'model_ema_force_cpu': 'the EMA copy stays on the training device',
    'no_prefetcher': 'images always go through timm\'s prefetcher, as the published runs',
}
_NULLS = ('null', 'none', '~')
_TRUE, _FALSE = ('true', 'yes', 'on', '1'), ('false', 'no', 'off', '0')


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's ``SafeLoader``, except that a mapping with the same key twice is an error naming the key and both
    lines. PyYAML keeps the last value silently, so a recipe edited by appending ``lr: ...`` below an older ``lr``
    trains with whichever comes last, and nothing says so. Every YAML file this project reads goes through
    :func:`load_yaml`."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == 'tag:yaml.org,2002:merge':
                    continue
                key = key_node.value
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f'the key {key!r} is given twice, on line {seen[key] + 1} and line '
                        f'{key_node.start_mark.line + 1}: YAML would silently keep the second value. Delete one of '
                        f'the two lines', key_node.start_mark)
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def load_yaml(stream) -> Any:
    """``yaml.safe_load`` with :class:`UniqueKeyLoader` (a key given twice is a ``yaml.YAMLError``)."""
    return yaml.load(stream, Loader=UniqueKeyLoader)


class Config:
    """Resolved configuration: attribute access (``cfg.lr``), ``cfg.to_dict()``; ``source`` is the YAML file,
    ``command_line`` the names of the keys given on the command line."""

    def __init__(self, values: Mapping[str, Any], source: Optional[str] = None, command_line=()):
        object.__setattr__(self, '_values', dict(values))
        object.__setattr__(self, 'source', source)
        object.__setattr__(self, 'command_line', frozenset(command_line))

    def __getattr__(self, name):
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f'no config key {name!r}') from None

    def __setattr__(self, name, value):
        if name not in self._values:
            raise AttributeError(f'no config key {name!r}')
        self._values[name] = value

    def __contains__(self, name):
        return name in self._values

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self._values.items()}

    def __repr__(self):
        return f'Config({self._values!r})'


def _closest(name: str, known) -> str:
    match = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
    return f' (did you mean {match[0]!r}?)' if match else ''


def _unknown(name: str, where: str, known) -> ConfigError:
    return ConfigError(f'unknown config key {name!r} in {where}{_closest(name, known)}.\n'
                       f'Run with --help for the list of keys.')


def convert(name: str, key: Key, value: Any) -> Any:
    """``value`` (from YAML or the command line) converted to the key's type, or :class:`ConfigError`."""
    def bad(expected):
        return ConfigError(f'config key {name!r}: expected {expected}, got {value!r}')

    if value is None or (isinstance(value, str) and value.strip().lower() in _NULLS):
        if key.nullable:
            return None
        raise bad(f'a value ({key.kind if key.kind == FLOATS else key.kind.__name__}); it cannot be null')
    if key.kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
            return value.lower() in _TRUE
        raise bad('true or false')
    if key.kind == FLOATS:
        items = value.replace(',', ' ').split() if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise bad('a list of numbers')
        out = []
        for item in items:
            out.extend(convert(name, Key(None, float), part) for part in
                       (item.replace(',', ' ').split() if isinstance(item, str) else [item]))
        if key.length is not None and len(out) != key.length:
            raise bad(f'{key.length} numbers')
        return tuple(out)
    if isinstance(value, bool):
        raise bad(key.kind.__name__)
    try:
        if key.kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            result = int(float(value)) if isinstance(value, float) else int(value)
        elif key.kind is float:
            result = float(value)
        elif isinstance(value, (str, int, float)):
            result = str(value)
        else:
            raise ValueError
    except (ValueError, TypeError, OverflowError):  # TypeError: a list or mapping, e.g. `batch_size: [64]`
        raise bad(key.kind.__name__) from None
    if key.choices and result not in key.choices:
        raise ConfigError(f'config key {name!r}: {result!r} is not one of {", ".join(key.choices)}')
    return result


def _is_option(token: str) -> bool:
    if token in ('-T', '-h'):
        return True
    if not token.startswith('-'):
        return False
    try:
        float(token)  # a negative number is a value
        return False
    except ValueError:
        return True


def parse_cli(argv: Sequence[str], schema: Mapping[str, Key], help_keys: Optional[Sequence[str]] = None) -> tuple:
    """``(overrides, config_path)`` from command-line tokens; prints the help (of ``help_keys`` only, when given)
    and exits on ``-h``/``--help``."""
    overrides, config_path, i = {}, None, 0
    argv = list(argv)
    while i < len(argv):
        token = argv[i]
        if token in ('-h', '--help'):
            print_help(schema, help_keys)
            sys.exit(0)
        if not _is_option(token):
            raise ConfigError(f'unexpected argument {token!r}: options are written --key value (see --help)')
        body = token.lstrip('-')
        inline = None
        if '=' in body:
            body, inline = body.split('=', 1)
        name = ALIASES.get(body, body.replace('-', '_'))
        i += 1
        values = [inline] if inline is not None else []
        if inline is None:
            while i < len(argv) and not _is_option(argv[i]):
                values.append(argv[i])
                i += 1
        if name == 'config':
            if len(values) != 1:
                raise ConfigError('--config expects one path')
            config_path = os.path.expanduser(values[0])  # as PATH_KEYS
            continue
        negated = name.startswith('no_') and name not in schema and schema.get(name[3:], Key(0, int)).kind is bool
        if negated:
            if values:
                raise ConfigError(f'--{body} takes no value')
            overrides[name[3:]] = False
            continue
        if name not in schema and name in ABSENT_FLAGS:
            raise ConfigError(f'{token} does not exist here: {ABSENT_FLAGS[name]}.')
        if name not in schema:
            raise _unknown(token, 'the command line', [f'--{k.replace("_", "-")}' for k in schema])
        key = schema[name]
        if key.kind is bool and not values:
            overrides[name] = True
        elif name in BARE_VALUES and not values:
            overrides[name] = BARE_VALUES[name]
        elif key.kind == FLOATS and len(values) > 1:
            overrides[name] = convert(name, key, values)
        elif len(values) != 1:
            raise ConfigError(f'--{body} expects one value, got {len(values)}: {" ".join(values) or "(none)"}')
        else:
            overrides[name] = convert(name, key, values[0])
    return overrides, config_path


def read_yaml(path: str, schema: Mapping[str, Key]) -> dict:
    """The values of YAML file ``path``, validated against ``schema``."""
    if not os.path.isfile(path):
        raise ConfigError(f'config file not found: {path}\nPass an existing YAML file with --config (relative paths '
                          f'start in the current directory: {os.getcwd()}).')
    try:
        with open(path) as f:
            data = load_yaml(f)
    except UnicodeDecodeError as e:
        raise ConfigError(f'config file {path} is not UTF-8 text ({e.reason} at byte {e.start}): is it a YAML '
                          f'file?') from None
    except yaml.YAMLError as e:
        raise ConfigError(f'config file {path} is not valid YAML:\n{e}') from None
    if not data and isinstance(data, (dict, type(None))):
        raise ConfigError(f'config file {path} holds no keys (it is empty, or only comments): it would silently '
                          f'mean the schema defaults (a 300-epoch recipe, see --help).\nWrite the keys to set into '
                          f'it, or pass one of the published configs (e.g. cifar10/cifar10.yml) with --config.')
    if not isinstance(data, dict):
        raise ConfigError(f'config file {path} must hold a mapping of keys to values, got {type(data).__name__}')
    return validate(data, schema, f'config file {path}')


def validate(data: Mapping, schema: Mapping[str, Key], where: str) -> dict:
    values = {}
    for raw, value in data.items():
        name = str(raw).replace('-', '_')
        if name not in schema:
            raise _unknown(str(raw), where, schema)
        if name in values:  # e.g. batch-size and batch_size: two spellings of one key, which YAML cannot see
            spellings = ', '.join(repr(str(k)) for k in data if str(k).replace('-', '_') == name)
            raise ConfigError(f'config key {name!r} is given twice in {where} (as {spellings}); only one value can '
                              f'count.\nFix: delete one of them.')
        try:
            values[name] = convert(name, schema[name], value)
        except ConfigError as e:  # say where the value came from (a YAML file, a checkpoint's recorded config)
            raise ConfigError(f'{e} (in {where})') from None
    return values


def _extra_schema(extra_keys: Optional[Mapping[str, Any]]) -> dict:
    schema = dict(SCHEMA)
    for name, spec in (extra_keys or {}).items():
        if isinstance(spec, Key):
            schema[name] = spec
        elif isinstance(spec, (list, tuple)):
            schema[name] = Key(tuple(spec), FLOATS)
        else:
            schema[name] = Key(spec, type(spec) if spec is not None else str, nullable=spec is None)
    return schema


def load_config(argv: Optional[Sequence[str]] = None, default_config: Optional[str] = None,
                extra_keys: Optional[Mapping[str, Any]] = None, base: Optional[Mapping[str, Any]] = None,
                help_keys: Optional[Sequence[str]] = None) -> Config:
    """Parse ``argv`` (default ``sys.argv[1:]``) into a :class:`Config`.

    The YAML file is ``--config PATH``, else ``default_config``; when neither is given, ``base`` (e.g. the config a
    checkpoint was trained with) stands in for it. ``extra_keys`` maps a script's own keys to their defaults (the
    type follows the default; None makes a nullable string) or to :class:`Key` objects. ``help_keys``: the keys
    ``--help`` lists (a script that reads only some, e.g. :data:`EVALUATION_KEYS`); every key is still accepted.
    """
    schema = _extra_schema(extra_keys)
    overrides, config_path = parse_cli(sys.argv[1:] if argv is None else argv, schema, help_keys)
    values = {name: key.default for name, key in schema.items()}
    origins = dict.fromkeys(schema, 'the default')
    source = config_path or (None if base is not None else default_config)
    if source:
        layer, origin = read_yaml(source, schema), f'config file {source}'
    elif base is not None:
        layer = validate({k: v for k, v in base.items() if k in schema}, schema, 'the checkpoint\'s config')
        origin = 'the checkpoint\'s config'
    else:
        layer, origin = {}, ''
    for updates, where in ((layer, origin), (overrides, 'the command line')):
        values.update(updates)
        origins.update(dict.fromkeys(updates, where))
    check_values(values, schema, origins)
    values.update({k: os.path.expanduser(values[k]) for k in PATH_KEYS if isinstance(values.get(k), str)})
    return Config(values, source, command_line=overrides)


def has_config_option(argv: Sequence[str]) -> bool:
    """Whether the command line names a YAML file (``--config PATH`` or ``--config=PATH``)."""
    return any(a == '--config' or a.startswith('--config=') for a in argv)


def recorded_config(checkpoint) -> Optional[dict]:
    """The config a checkpoint written by ``train.py`` records (its ``args``, a dict); None for any other checkpoint
    (the published ones record an argparse Namespace, of another code base)."""
    args = checkpoint.get('args') if isinstance(checkpoint, dict) else None
    return args if isinstance(args, dict) else None


def config_from_checkpoint(argv: Sequence[str], checkpoint, extra_keys: Optional[Mapping[str, Any]] = None,
                           evaluation: bool = False) -> Optional[Config]:
    """A checkpoint written by ``train.py`` brings its own config: unless the command line names a ``--config``, the
    config the checkpoint records (less its :data:`INVOCATION_KEYS`) stands in for the YAML file, and the command
    line overrides it. None when ``argv`` has ``--config`` or the checkpoint records no config of this project;
    the caller's config then stands. Used by ``test.py``, ``--resume`` and the report scripts alike; ``evaluation``
    (``test.py`` and the reports) also leaves out :data:`TRAINING_ONLY_KEYS`, so a checkpoint never makes an evaluation
    download (the recorded ``data_dir`` is only read: a missing one is an error naming ``--data-dir``)."""
    recorded = recorded_config(checkpoint)
    if recorded is None or has_config_option(argv):
        return None
    dropped = INVOCATION_KEYS + (TRAINING_ONLY_KEYS if evaluation else ())
    return load_config(argv, None, extra_keys=extra_keys,
                       base={k: v for k, v in recorded.items() if k not in dropped})


def _fix_hint(name: str, origin: str, rule: str) -> str:
    flag = '--' + name.replace('_', '-')
    if origin.startswith('config file '):
        return f'set {name} in {origin[len("config file "):]} to {rule} (or override it with {flag})'
    return f'set {flag} to {rule}'


def check_values(values: Mapping[str, Any], schema: Mapping[str, Key], origins: Mapping[str, str]) -> None:
    """Every number within its key's ``bounds`` and finite (unless the key says otherwise), or :class:`ConfigError`
    naming the key, the value and where it came from, the allowed range and the fix."""
    for name, value in values.items():
        key = schema[name]
        if value is None or key.kind not in (int, float, FLOATS) or isinstance(value, bool):
            continue
        numbers = value if key.kind == FLOATS else (value,)
        finite = not key.finite or key.kind is int or all(math.isfinite(x) for x in numbers)
        if finite and (key.bounds is None or all(x in key.bounds for x in numbers)):
            continue
        kind = {int: 'an integer', float: 'a finite number', FLOATS: 'finite numbers'}[key.kind]
        if not key.finite:
            kind = {float: 'a number', FLOATS: 'numbers'}.get(key.kind, kind)
        rule = f'{kind}{f" {key.bounds}" if key.bounds is not None else ""}'
        if key.kind == FLOATS:
            rule = f'{key.length} {rule}' if key.length else f'a list of {rule}'
        origin = origins.get(name, 'the default')
        raise ConfigError(f'config key {name!r} is {list(value) if key.kind == FLOATS else value!r} (from {origin}); '
                          f'it must be {rule}.\nFix: {_fix_hint(name, origin, rule)}.')


def mixing_on(cfg) -> bool:
    """Whether mixup or cutmix is on (timm's ``Mixup`` then mixes each sample with another of its batch)."""
    return cfg.mixup > 0 or cfg.cutmix > 0 or cfg.cutmix_minmax is not None


def check_cross_keys(cfg: Config) -> None:
    """The rules between keys of a training run, or :class:`ConfigError` (called by ``train_main``; evaluation does
    not need them, so a checkpoint's training config never blocks ``test.py``).

    - Warmup and cooldown: timm's schedulers overlay the linear warmup on the first ``warmup_epochs`` of the
      schedule, whose ``epochs`` are then followed by ``cooldown_epochs`` at ``min_lr``. A warmup longer than the
      schedule would continue into the cooldown (the lr would rise where it should stay at ``min_lr``), so with a
      cooldown ``warmup_epochs`` <= ``epochs``. Without a cooldown a run may end inside its warmup (short trials).
      ``train_main`` first clips a short run to fit (``utils.training.timm_flags.fit_schedule``), so this refuses only
      where it is called directly.
    - Ranges are ordered: ``scale``, ``ratio`` and ``cutmix_minmax`` are (min, max).
    - Batch mixup/cutmix pairs each sample with another of the batch (timm asserts an even batch): with mixup or
      cutmix on, ``batch_size`` is even.
    """
    if cfg.cooldown_epochs > 0 and cfg.warmup_epochs > cfg.epochs:
        raise ConfigError(f'warmup_epochs is {cfg.warmup_epochs} but epochs is {cfg.epochs}: the warmup is part of '
                          f'the schedule\'s epochs, so it would continue into the {cfg.cooldown_epochs} cooldown '
                          f'epochs and the lr would rise there instead of staying at min_lr ({cfg.min_lr:g}).\n'
                          f'Fix: --warmup-epochs {cfg.epochs} or less, or --cooldown-epochs 0 for a run that ends '
                          f'inside its warmup (rule: warmup_epochs <= epochs when cooldown_epochs > 0).')
    for name in ('scale', 'ratio', 'cutmix_minmax'):
        pair = getattr(cfg, name)
        if pair is not None and pair[0] > pair[1]:
            raise ConfigError(f'config key {name!r} is {list(pair)}: it is a (min, max) range, min first.\n'
                              f'Fix: --{name.replace("_", "-")} {pair[1]:g} {pair[0]:g}')
    if mixing_on(cfg) and cfg.batch_size % 2:
        raise ConfigError(f'batch_size is {cfg.batch_size}, but mixup/cutmix (mixup {cfg.mixup:g}, cutmix '
                          f'{cfg.cutmix:g}) mixes each sample with another of its batch and needs an even batch '
                          f'size.\nFix: --batch-size {cfg.batch_size + 1}'
                          f'{f" (or {cfg.batch_size - 1})" if cfg.batch_size > 1 else ""}, or turn mixing off with '
                          f'--mixup 0 --cutmix 0.')


def save_config(cfg: Config, path: str, header: Optional[str] = None) -> None:
    """Write the resolved config as YAML (loadable again with ``--config``), atomically (``utils.run.atomic``);
    ``header`` becomes a comment line above it."""
    def write(tmp):
        with open(tmp, 'w') as f:
            if header:
                f.write(f'# {header}\n')
            yaml.safe_dump(cfg.to_dict(), f, sort_keys=False, default_flow_style=None)
    replace_atomically(path, write)


def print_help(schema: Mapping[str, Key] = SCHEMA, keys: Optional[Sequence[str]] = None) -> None:
    """The usage and one line per key of ``schema`` (only ``keys``, in schema order, when given)."""
    print('usage: [--config FILE.yml] [--key value ...]   (- and _ are equivalent; -T = --time-steps, '
          '-b = --batch-size, -j = --workers)')
    print('Defaults below are the schema\'s; the YAML file (the script\'s own unless --config) overrides them.')
    if keys is not None:
        print('Only the keys this script reads are listed; the training keys of a config file or checkpoint are '
              'accepted and have no effect here.')
    print()
    for name, key in schema.items():
        if keys is not None and name not in keys:
            continue
        kind = 'list' if key.kind == FLOATS else key.kind.__name__
        choices = f' {{{"|".join(key.choices)}}}' if key.choices else ''
        print(f'  --{name.replace("_", "-"):<22} {kind}{choices}, default {key.default!r}: {key.help}')
