"""Your own data: ``--dataset folder --data-dir DIR``, any ``DIR/train/<class>/`` + ``DIR/val/<class>/`` image tree.

It is read as ImageNet is (timm's ImageFolder and training pipeline: ``img_size``, ``mean``, ``std`` and the
augmentation keys of the config apply) with the checks of ``utils.data.data_checks`` (class folders that hold images and
agree between the splits). What differs:

- the class count follows the folder (counted from ``train/``) unless the command line gives ``--num-classes``, so
  a published config (``imagenet/imagenet.yml`` says 1000) works on any folder as it is; a resume or ``test.py``
  recounts, and the recipe check or the class check below refuses another folder;
- ``dataset_name`` (``--dataset-name``, default the folder's name) names the data in the logs, the run folder and
  the reports;
- the class names are recorded in every checkpoint of the run (``class_names``) and checked at ``test.py``: a
  folder whose classes differ (other names, order or count) is refused, since the model's outputs would be read
  as the wrong classes.
"""
import os
from typing import Optional

from utils.config import Config
from utils.errors import DataError

FOLDER = 'folder'


def folder_class_count(data_dir: str) -> int:
    """The class folders of ``data_dir/train`` (the ImageFolder checks verify they hold images, once read)."""
    train = os.path.join(data_dir, 'train')
    if not os.path.isdir(train):
        raise DataError(f'--dataset folder: {train} not found.\nPoint --data-dir at the folder that holds train/ and '
                        f'val/, each with one sub-folder of images per class.')
    return sum(os.path.isdir(os.path.join(train, d)) for d in os.listdir(train))


def resolve_folder(cfg: Config) -> None:
    """Fill a folder data set's ``num_classes`` and ``dataset_name`` (called by
    ``utils.data.loaders.resolve_data_config`` before the data set's defaults)."""
    if cfg.dataset != FOLDER:
        return
    if cfg.data_dir is None:
        raise DataError('--dataset folder needs --data-dir: the folder that holds train/ and val/, each with one '
                        'sub-folder of images per class.')
    if 'num_classes' not in cfg.command_line or cfg.num_classes is None:
        cfg.num_classes = folder_class_count(cfg.data_dir)
    if 'dataset_name' in cfg and cfg.dataset_name is None:
        cfg.dataset_name = os.path.basename(os.path.normpath(os.path.abspath(cfg.data_dir)))


def dataset_label(cfg: Config) -> str:
    """The data set's name for logs and reports: ``dataset_name`` when set, else ``dataset``."""
    return getattr(cfg, 'dataset_name', None) or cfg.dataset


def class_names(dataset) -> Optional[list]:
    """The class names of an ImageFolder data set (timm's reader), None for other data sets."""
    dataset = getattr(dataset, 'dataset', dataset)  # a Shard
    mapping = getattr(getattr(dataset, 'reader', None), 'class_to_idx', None)
    return sorted(mapping, key=mapping.get) if mapping else None


def check_checkpoint_classes(checkpoint, dataset, data_dir: str, path: str) -> None:
    """The classes a checkpoint's run recorded equal those of the folder it is evaluated on (nothing to compare when
    either side has no names)."""
    recorded = checkpoint.get('class_names') if isinstance(checkpoint, dict) else None
    found = class_names(dataset)
    if not recorded or found is None or list(recorded) == found:
        return
    only_run, only_here = set(recorded) - set(found), set(found) - set(recorded)
    detail = '; '.join(p for p in (f'only in the run: {", ".join(sorted(only_run)[:8])}' if only_run else '',
                                   f'only here: {", ".join(sorted(only_here)[:8])}' if only_here else '') if p) \
        or 'the same names in another order'
    raise DataError(f'{path} was trained on {len(recorded)} classes, and {data_dir} has {len(found)} that differ '
                    f'({detail}): its outputs would be read as the wrong classes.\nFix: evaluate on the folder the run '
                    f'was trained on (--data-dir), with the same class folders.')
