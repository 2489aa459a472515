"""Checks of the data against the config, run when the data sets are built (before any model or run folder).

- ``num_classes`` equals the data's class count, for every kind of data set: the CIFAR pickles (whose labels must
  also lie in ``0 .. classes - 1``), the digits, an ImageFolder tree (its class folders) and the event data sets.
  A smaller head fails only at the first larger label, deep into training; a larger one trains outputs no sample
  uses and makes ``test.py`` report an accuracy over the wrong classes.
- An ImageFolder tree (``train/<class>/``, ``val/<class>/``): every class folder holds images, and train and val
  have the same class folders. timm numbers the classes from the leaf folders *that hold images*, in sorted
  order, separately per split, so an empty folder (or one missing in a split) silently shifts every later label
  between train and val.
- The first sample of each split can be read (:func:`read_first_sample`).
- The training set fills at least one batch per process (the training loader drops the incomplete last batch, so
  an epoch would train on nothing), and the evaluation set is not empty.
- ``grad_accum_steps`` is at most the batches of an epoch (or ``limit_train_batches``): a larger value makes one
  optimizer step per epoch, of fewer images than the global batch the run states (the engine steps on the last,
  partial group, as timm).

Every failure is a :class:`~utils.errors.DataError` naming the folders or numbers involved and the fix.
"""
import math
import os

from utils.config import mixing_on
from utils.errors import DataError

MAX_LISTED = 8  # folder names shown in a message; the rest are counted


def _listed(names) -> str:
    names = sorted(names)
    more = f' and {len(names) - MAX_LISTED} more' if len(names) > MAX_LISTED else ''
    return ', '.join(names[:MAX_LISTED]) + more


def image_folder_classes(split_dir: str, dataset) -> list:
    """The class names of a timm ImageFolder ``dataset`` read from ``split_dir``, checked against its folders."""
    classes = list(dataset.reader.class_to_idx)
    folders = {d for d in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, d))}
    empty = folders - set(classes)
    unreadable = {}
    for name in sorted(empty):  # timm's walk skips a folder it cannot list: say so, not that it is empty
        try:
            with os.scandir(os.path.join(split_dir, name)):
                pass
        except OSError as e:
            unreadable[name] = e.strerror or type(e).__name__
    if unreadable:
        reasons = sorted(set(unreadable.values()))
        raise DataError(f'{len(unreadable)} class folder(s) under {split_dir} cannot be read ({", ".join(reasons)}): '
                        f'{_listed(unreadable)}.\nFix: give the user running this read and execute permission on '
                        f'them (e.g. chmod -R a+rX {split_dir}), or check the mount.')
    if empty:
        raise DataError(f'{len(empty)} class folder(s) under {split_dir} hold no images: {_listed(empty)}.\n'
                        f'timm numbers the classes from the folders that hold images, so an empty folder shifts the '
                        f'labels of every later class (differently in train/ and val/).\nFix: put its images in, or '
                        f'remove the folder from both train/ and val/.')
    stray = set(classes) - folders
    if stray:
        raise DataError(f'{split_dir} has images outside its class folders (found as classes: '
                        f'{_listed(repr(c) for c in stray)}).\nFix: every image sits in {split_dir}/<class>/ '
                        f'(one folder level, no images directly in {split_dir} and no sub-folders).')
    return classes


def _image_folder_count(cfg, train_ds, eval_ds) -> tuple:
    found = {}
    for split, ds in (('train', train_ds), ('val', eval_ds)):
        if ds is not None:
            found[split] = image_folder_classes(os.path.join(cfg.data_dir, split), ds)
    if len(found) == 2 and found['train'] != found['val']:
        only_train = set(found['train']) - set(found['val'])
        only_val = set(found['val']) - set(found['train'])
        parts = [f'only in train/: {_listed(only_train)}' if only_train else '',
                 f'only in val/: {_listed(only_val)}' if only_val else '']
        raise DataError(f'the class folders of {cfg.data_dir}/train and {cfg.data_dir}/val differ ('
                        f'{"; ".join(p for p in parts if p)}): labels are numbered per split, so they would not '
                        f'match.\nFix: give both splits the same class folders.')
    classes = next(iter(found.values()))
    return len(classes), f'{len(classes)} class folders under {cfg.data_dir}'


def _label_count(cfg, datasets, count: int) -> tuple:
    """``count`` (the data set's published class count), after checking every label lies below it."""
    for ds in datasets:
        targets = getattr(ds, 'targets', None)
        if targets is not None and len(targets) and not 0 <= min(targets) <= max(targets) < count:
            raise DataError(f'the {cfg.dataset} data under {cfg.data_dir} has labels from {min(targets)} to '
                            f'{max(targets)}, outside 0..{count - 1} (a corrupt or foreign file).\nFix: get or '
                            f'prepare it again (CIFAR: delete the folder, then --dataset-download).')
    return count, f'{count} classes'


def check_datasets(cfg, train_ds, eval_ds) -> None:
    """``num_classes`` against the data, and the ImageFolder layout; see the module docstring."""
    from utils.data.loaders import DATASETS  # late: utils.data.loaders imports this module
    datasets = [ds for ds in (train_ds, eval_ds) if ds is not None]
    if not datasets:
        return
    if cfg.dataset in ('imagenet', 'folder'):  # ImageFolder trees
        count, found = _image_folder_count(cfg, train_ds, eval_ds)
    else:  # CIFAR, digits, event data: the class count is the data set's own
        count, found = _label_count(cfg, datasets, DATASETS[cfg.dataset]['num_classes'])
    if cfg.num_classes != count:
        where = '' if cfg.dataset == 'digits' else f' ({cfg.data_dir})'  # the digits come with scikit-learn
        raise DataError(f'num_classes is {cfg.num_classes}, but the {cfg.dataset} data{where} has {found}: the model '
                        f'needs one output per class.\nFix: --num-classes {count}, or point --data-dir at the data '
                        f'the config (or checkpoint) is for.')
    if eval_ds is not None and len(eval_ds) == 0:
        raise DataError(f'the evaluation split of {cfg.data_dir} has no samples.\nFix: check --data-dir.')
    for ds in datasets:
        read_first_sample(ds)


def read_first_sample(ds) -> None:
    """Read the first sample of ``ds`` once, so that a split whose files cannot be read (all images damaged, a frame
    cache of the wrong shape) is refused with the reader's own message (a ``DataError``) before a run folder is
    written or a report pass starts, not at the first batch. The random generators are left as they were (a DVS
    split's augmentation draws from torch's)."""
    import torch  # late: this module stays light for utils.config's users
    if len(ds):
        with torch.random.fork_rng(devices=[]):
            ds[0]


def check_batches(cfg, train_ds, world: int = 1) -> None:
    """At least one full training batch per process (the training loader drops the incomplete last batch)."""
    per_process = math.ceil(len(train_ds) / world)
    if per_process >= cfg.batch_size:
        check_accumulation(cfg, per_process // cfg.batch_size, world)
        return
    fit = per_process - (per_process % 2 if mixing_on(cfg) else 0)  # batch mixup needs an even batch
    fix = f'--batch-size {fit} or less' if fit >= 1 else 'more training data'
    raise DataError(f'the training set of {cfg.data_dir} has {len(train_ds)} samples ({per_process} per process on '
                    f'{world}), fewer than one batch of batch_size {cfg.batch_size}: the loader drops the incomplete '
                    f'last batch, so an epoch would train on nothing.\nFix: {fix}.')


def check_accumulation(cfg, batches: int, world: int = 1) -> None:
    """``grad_accum_steps`` at most the ``batches`` each process trains per epoch (after ``limit_train_batches``)."""
    limit = getattr(cfg, 'limit_train_batches', None)
    per_epoch = min(batches, limit) if limit is not None else batches
    if cfg.grad_accum_steps <= per_epoch:
        return
    limited = f' (limit_train_batches {limit})' if limit is not None and limit < batches else ''
    images = per_epoch * cfg.batch_size * world
    raise DataError(f'grad_accum_steps is {cfg.grad_accum_steps}, but each process trains only {per_epoch} batch(es) '
                    f'per epoch{limited}: every epoch would make one optimizer step of {images} images, not the '
                    f'global batch of {cfg.batch_size} x {world} x {cfg.grad_accum_steps} = '
                    f'{cfg.batch_size * world * cfg.grad_accum_steps} that the recipe states.\nFix: --grad-accum-steps '
                    f'{per_epoch} or less{", or a larger --limit-train-batches" if limited else ""} (or more training '
                    f'data).')
