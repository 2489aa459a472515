"""Data sets and loaders: timm's training pipeline for images, plain loaders for event frames.

Images (CIFAR-10/100, ImageNet, the quick start's digits) go through timm's ``create_loader`` with its prefetcher,
as the published runs did: the workers produce uint8 images (random-resized crop, flip, RandAugment), the collate
function mixes them (timm's ``FastCollateMixup``: mixup/cutmix on the uint8 batch, rounded), and the
``PrefetchLoader`` then moves the batch to the device, normalises it and random-erases it, so an erased box holds
the constant fill on top of the mixed image. Event frames (DVS128 Gesture, CIFAR10-DVS) come from
``utils.data.dvs_data`` already augmented per sample; they get a plain ``DataLoader`` and timm's batch ``Mixup``,
applied by the engine in the main process (as the published DVS scripts). ``build_loaders`` returns that mixing object
as ``mixup_fn`` in both cases; :func:`mixes_in_loader` says which of the two it is, :func:`set_mixup_epoch` switches
it off from ``mixup_off_epoch`` on (the loaders create their workers each epoch, so the switch reaches them).

Evaluation is sharded without padding (:class:`Shard`), so a distributed evaluation sees every sample exactly once
and the summed metrics are exact (timm's ``OrderedDistributedSampler`` pads with repeated samples). Image
evaluation uses the prefetcher too, as the published ``validate``: uint8 to the device, normalised there.
"""
import os
import pickle
from typing import Optional

import numpy as np
import torch
from PIL import Image, ImageOps
from timm.data import FastCollateMixup, Mixup, create_loader
from timm.data import auto_augment
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from utils.config import Config, mixing_on
from utils.data.data_checks import check_batches, check_datasets
from utils.data.folder_data import FOLDER, resolve_folder
from utils.data.image_files import ImageFiles
from utils.data.rand_augment_ops import restrict_rand_augment
from utils.data.resumable_data import DatasetView, EpochKey, SeededSamples, make_resumable
from utils.errors import DataError
from utils.run.atomic import replace_atomically

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DIGITS_MEAN, DIGITS_STD = (0.3094,) * 3, (0.3488,) * 3  # of the 32x32 digits training split
DVS_DATASETS = ('dvs128-gesture', 'cifar10-dvs')

# Per data set: classes, input size, normalisation (used where the config leaves them null).
DATASETS = {
    'cifar10': dict(num_classes=10, img_size=32, mean=CIFAR_MEAN, std=CIFAR_STD),
    'cifar100': dict(num_classes=100, img_size=32, mean=CIFAR_MEAN, std=CIFAR_STD),
    'digits': dict(num_classes=10, img_size=32, mean=DIGITS_MEAN, std=DIGITS_STD),
    'imagenet': dict(num_classes=1000, img_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD),
    'dvs128-gesture': dict(num_classes=11, img_size=128, mean=None, std=None),
    'cifar10-dvs': dict(num_classes=10, img_size=128, mean=None, std=None),
    'folder': dict(num_classes=None, img_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD),  # utils.data.folder_data
}
# CIFAR python pickles: folder, training files, test files, label key.
CIFAR_FILES = {
    'cifar10': ('cifar-10-batches-py', [f'data_batch_{i}' for i in range(1, 6)], ['test_batch'], 'labels'),
    'cifar100': ('cifar-100-python', ['train'], ['test'], 'fine_labels'),
}
CIFAR_NAMES = {'cifar10': 'CIFAR-10', 'cifar100': 'CIFAR-100'}
DIGITS_SPLIT_SEED = 0  # the quick start's 80/20 split is fixed, whatever the training seed


def posterize(img: Image.Image, bits_to_keep: int, **_) -> Image.Image:
    """RandAugment's posterize, also for 0 bits (an all-black image).

    The published CIFAR policy (rand-m9-n1-mstd0.4-inc1) draws 0 bits whenever the noisy magnitude reaches 10 (about
    once in 160 posterize draws). Pillow before 13 returned a black image; Pillow 13 raises ValueError, which kills
    training. This restores the old result; it replaces timm's three posterize ops in its op table.
    """
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


for _name in ('Posterize', 'PosterizeIncreasing', 'PosterizeOriginal'):
    auto_augment.NAME_TO_OP[_name] = posterize


def resolve_data_config(cfg: Config) -> None:
    """Fill the config's null data keys from the data set's defaults (so args.yaml shows what was used)."""
    resolve_folder(cfg)  # --dataset folder: the class count and name follow the folder
    defaults = DATASETS[cfg.dataset]
    for name in ('num_classes', 'img_size', 'mean', 'std'):
        if getattr(cfg, name) is None:
            setattr(cfg, name, defaults[name])
    if cfg.data_dir is None:
        cfg.data_dir = os.path.join('data', cfg.dataset)
    if cfg.val_batch_size is None:
        cfg.val_batch_size = cfg.batch_size
    if cfg.eval_amp is None:  # as published: timm's validate under autocast, the DVS evaluate without it
        cfg.eval_amp = cfg.dataset not in DVS_DATASETS


class ArrayImages(Dataset):
    """Images held as a uint8 array ``[N, H, W, 3]`` with integer labels; ``transform`` is set by timm's loader."""

    def __init__(self, images: np.ndarray, targets, transform=None):
        self.images, self.targets, self.transform = images, list(targets), transform

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        image = Image.fromarray(self.images[index])
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR python batches without running code from them.

    A CIFAR batch is a dict of bytes, lists, strings and a NumPy uint8 array; plain ``pickle.load`` (what torchvision
    does) would also call any function a crafted file names. Only NumPy's array reconstruction is allowed here; any
    other global is refused with ``pickle.UnpicklingError`` (reported as an unreadable file)."""
    ALLOWED = {('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
               ('numpy', 'ndarray'), ('numpy', 'dtype')}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f'it holds a pickled {module}.{name}, which a CIFAR batch never does (refused: '
                                     f'unpickling it could run code)')


def cifar(name: str, root: str, train: bool, download: bool) -> ArrayImages:
    """CIFAR-10/100 from the python pickles under ``root``.

    Read here rather than with torchvision's class, which checks the MD5 of every file at each start (slow, and it
    rejects the small synthetic files the tests write); ``download`` still goes through torchvision, which verifies
    the archive it fetches.
    """
    folder, train_files, test_files, label_key = CIFAR_FILES[name]
    paths = [os.path.join(root, folder, f) for f in (train_files if train else test_files)]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing and download:
        _download_cifar(name, root, train)
        missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise DataError(f'{CIFAR_NAMES[name]} not found: {missing[0]} does not exist.\nPoint --data-dir at the folder '
                        f'that holds {folder}/, or add --dataset-download to download it there ({root}).')
    images, targets = [], []
    for path in paths:
        try:
            with open(path, 'rb') as f:
                entry = _CifarUnpickler(f, encoding='latin1').load()
            images.append(np.asarray(entry['data'], dtype=np.uint8).reshape(-1, 3, 32, 32))
            targets.extend(entry[label_key])
            if len(targets) != sum(len(x) for x in images):  # else an IndexError in the middle of an epoch
                raise ValueError(f'it holds {len(images[-1])} images but {len(entry[label_key])} labels')
        except Exception as e:  # truncated or foreign file
            raise DataError(f'cannot read {path}: {e}\nDelete {os.path.join(root, folder)} and download it again '
                            f'(--dataset-download).') from None
    return ArrayImages(np.concatenate(images).transpose(0, 2, 3, 1), targets)


def _download_cifar(name: str, root: str, train: bool) -> None:
    """torchvision's download of CIFAR into ``root``; a failure (no network, a proxy, a bad checksum) is a
    :class:`DataError` naming the URL and the offline fix, and leaves no partial archive or folder behind."""
    import torchvision
    dataset = getattr(torchvision.datasets, name.upper())
    created, path = [], os.path.abspath(root)  # the folders the download would create (deepest first)
    while not os.path.exists(path):
        created.append(path)
        path = os.path.dirname(path)
    try:
        dataset(root, train=train, download=True)
    except (OSError, RuntimeError, ValueError) as e:  # urllib's URLError is an OSError; a bad checksum RuntimeError
        archive = os.path.join(root, dataset.filename)
        if os.path.isfile(archive) and not _archive_complete(archive, dataset.tgz_md5):
            os.remove(archive)
        for folder in created:
            if os.path.isdir(folder) and not os.listdir(folder):
                os.rmdir(folder)
        reason = ' '.join(str(getattr(e, 'reason', None) or e).split())[:200] or type(e).__name__
        raise DataError(f'cannot download {CIFAR_NAMES[name]} from {dataset.url} ({reason}).\nFix: check the network '
                        f'(or proxy), or download that file on another machine, extract it into {root} (it holds '
                        f'{CIFAR_FILES[name][0]}/) and run without --dataset-download.') from None


def _archive_complete(path: str, md5: str) -> bool:
    from torchvision.datasets.utils import check_integrity
    return check_integrity(path, md5)


def digits(train: bool, size: int = 32) -> ArrayImages:
    """scikit-learn's 1797 handwritten digits (8x8, 17 grey levels), scaled to ``size`` x ``size`` RGB; a fixed,
    stratified 80/20 split (1437 / 360)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    data = load_digits()
    train_idx, test_idx = train_test_split(np.arange(len(data.target)), test_size=0.2, random_state=DIGITS_SPLIT_SEED,
                                           stratify=data.target)
    idx = train_idx if train else test_idx
    small = (data.images[idx] * (255 / 16)).round().astype(np.uint8)
    images = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC).convert('RGB'))
                       for im in small])
    return ArrayImages(images, data.target[idx])


def image_folder(root: str, split: str):
    path = os.path.join(root, split)
    if not os.path.isdir(path):
        raise DataError(f'{split} folder not found: {path}\nPoint --data-dir at the folder that holds '
                        f'train/ and val/, each with one sub-folder of images per class.')
    try:
        return ImageFiles(path)  # timm's ImageDataset, with 16-bit images scaled (utils.data.image_files)
    except RuntimeError as e:  # e.g. a folder without images
        raise DataError(f'cannot read the images under {path}: {e}') from None


def build_datasets(cfg: Config, train: bool = True, evaluation: bool = True):
    """``(train_ds, eval_ds)`` of the config's data set (either is None when not requested)."""
    resolve_data_config(cfg)
    if cfg.dataset in DVS_DATASETS:
        # lazy: the event-data code is only needed for those data sets
        from utils.data.dvs_data import build_dvs_datasets
        both = build_dvs_datasets(cfg)  # the two splits come from one frame cache
        make = lambda is_train: both[0 if is_train else 1]  # noqa: E731
    elif cfg.dataset == 'digits':
        make = lambda is_train: digits(is_train, cfg.img_size or 32)  # noqa: E731
    elif cfg.dataset in ('imagenet', FOLDER):
        make = lambda is_train: image_folder(cfg.data_dir, 'train' if is_train else 'val')  # noqa: E731
    else:
        make = lambda is_train: cifar(cfg.dataset, cfg.data_dir, is_train, cfg.dataset_download)  # noqa: E731
    train_ds, eval_ds = (make(True) if train else None), (make(False) if evaluation else None)
    check_datasets(cfg, train_ds, eval_ds)
    return train_ds, eval_ds


class Shard(DatasetView):
    """Every ``world``-th sample from ``rank`` on, without padding; forwards ``transform`` to the data set."""

    def __init__(self, dataset, rank: int = 0, world: int = 1):
        self.dataset, self.indices = dataset, range(rank, len(dataset), world)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, index):
        return self.dataset[self.indices[index]]


def _device(device) -> torch.device:
    return torch.device(device) if device is not None else torch.device('cpu')


def _eval_loader(cfg: Config, dataset, rank: int, world: int, device) -> DataLoader:
    shard = Shard(dataset, rank, world)
    device = _device(device)
    if cfg.dataset in DVS_DATASETS:
        return DataLoader(shard, batch_size=cfg.val_batch_size, shuffle=False, num_workers=cfg.workers,
                          pin_memory=device.type == 'cuda')
    return create_loader(shard, input_size=(3, cfg.img_size, cfg.img_size), batch_size=cfg.val_batch_size,
                         is_training=False, interpolation=cfg.interpolation, mean=cfg.mean, std=cfg.std,
                         num_workers=cfg.workers, crop_pct=cfg.crop_pct, pin_memory=device.type == 'cuda',
                         use_prefetcher=True, device=device, persistent_workers=False)


def build_eval_loader(cfg: Config, rank: int = 0, world: int = 1, device=None) -> DataLoader:
    """The evaluation loader alone (no training set is read); this process's shard when ``world`` > 1."""
    resolve_data_config(cfg)
    _, eval_ds = build_datasets(cfg, train=False)
    return _eval_loader(cfg, eval_ds, rank, world, device)


def build_mixup(cfg: Config, collate: bool = False) -> Optional[Mixup]:
    """timm's Mixup (also label smoothing) when mixup or cutmix is on, else None; ``collate`` gives its
    ``FastCollateMixup``, which mixes while collating uint8 images. The even batch it needs is checked with the
    other training rules (``utils.config.check_cross_keys``)."""
    if not mixing_on(cfg):
        return None
    return (FastCollateMixup if collate else Mixup)(
        mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, cutmix_minmax=cfg.cutmix_minmax, prob=cfg.mixup_prob,
        switch_prob=cfg.mixup_switch_prob, mode=cfg.mixup_mode, label_smoothing=cfg.smoothing,
        num_classes=cfg.num_classes)


def mixes_in_loader(mixup_fn) -> bool:
    """Whether ``mixup_fn`` (from :func:`build_loaders`) mixes inside the training loader (images), so the engine
    must not mix the batches again."""
    return isinstance(mixup_fn, FastCollateMixup)


def set_mixup_epoch(mixup_fn, cfg: Config, epoch: int) -> None:
    """Mix in ``epoch`` unless ``cfg.mixup_off_epoch`` has been reached; call before the epoch's loader iterator
    is created.

    Why this reaches the loader's worker processes: they are created anew for every epoch (no persistent workers)
    and take a copy of the collate function then. The published image scripts cleared the flag in the main process
    while their persistent workers kept mixing, which is why this project's CIFAR configs set ``mixup_off_epoch: null``.
    """
    if mixup_fn is not None:
        mixup_fn.mixup_enabled = cfg.mixup_off_epoch is None or epoch < cfg.mixup_off_epoch


def _write_text(path: str, text: str) -> None:
    with open(path, 'w') as f:
        f.write(text)


def write_sample_files(output: str, train_ds, eval_ds) -> None:
    """Write ``train_files.txt`` / ``test_files.txt`` (one sample a line) for data sets with ``sample_files``,
    atomically (``utils.run.atomic``: never through a link to another file)."""
    for ds, name in ((train_ds, 'train_files.txt'), (eval_ds, 'test_files.txt')):
        if getattr(ds, 'sample_files', None) is not None:
            lines = ''.join(f'{p}\n' for p in ds.sample_files)
            replace_atomically(os.path.join(output, name), lambda tmp, lines=lines: _write_text(tmp, lines))


def build_loaders(cfg: Config, distributed: bool = False, rank: int = 0, world: int = 1, device=None):
    """``(train_loader, eval_loader, mixup_fn)``; ``mixup_fn`` is the mixing object (None without mixing): the
    loader's collate function for images (:func:`mixes_in_loader`), a batch ``Mixup`` for the engine otherwise.

    The training loader shuffles (a ``DistributedSampler`` when ``distributed``: call ``set_epoch``) and drops the
    last incomplete batch (batch mixup needs an even batch).
    """
    resolve_data_config(cfg)
    train_ds, eval_ds = build_datasets(cfg)
    check_batches(cfg, train_ds, world)
    device = _device(device)
    train_ds = SeededSamples(train_ds, EpochKey(cfg.seed, rank))  # an epoch that can resume at any batch
    if cfg.dataset in DVS_DATASETS:
        mixup_fn = build_mixup(cfg)
        sampler = DistributedSampler(train_ds, num_replicas=world, rank=rank, seed=cfg.seed) if distributed else None
        train_loader = DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=sampler is None, sampler=sampler,
                                  num_workers=cfg.workers, pin_memory=device.type == 'cuda', drop_last=True)
    else:
        mixup_fn = build_mixup(cfg, collate=True)
        train_loader = create_loader(
            train_ds, input_size=(3, cfg.img_size, cfg.img_size), batch_size=cfg.batch_size, is_training=True,
            re_prob=cfg.reprob, re_mode=cfg.remode, re_count=cfg.recount, scale=cfg.scale, ratio=cfg.ratio,
            hflip=cfg.hflip, color_jitter=cfg.color_jitter, auto_augment=cfg.aa, interpolation=cfg.interpolation,
            mean=cfg.mean, std=cfg.std, num_workers=cfg.workers, distributed=distributed, collate_fn=mixup_fn,
            pin_memory=device.type == 'cuda', use_prefetcher=True, device=device, persistent_workers=False)
        if distributed:  # timm's sampler has seed 0 and the default rank; make it follow the config
            train_loader.sampler.seed = cfg.seed
        restrict_rand_augment(train_loader.dataset.transform, cfg.aa_ops, cfg.aa)
    # every random draw keyed by (seed, rank, epoch, position): train_loader.resumable.start_epoch before each epoch
    train_loader.resumable, batch_mixup = make_resumable(train_loader, device, None if mixes_in_loader(mixup_fn)
                                                         else mixup_fn)
    mixup_fn = mixup_fn if mixes_in_loader(mixup_fn) else batch_mixup
    return train_loader, _eval_loader(cfg, eval_ds, rank, world, device), mixup_fn
