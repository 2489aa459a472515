"""DVS128 Gesture and CIFAR10-DVS datasets for the engine: frames by event count, cached by SpikingJelly.

``build_dvs_datasets(cfg) -> (train_ds, test_ds)`` reads the root prepared by ``scripts/prepare_dvs.py``
(``cfg.data_dir``; SpikingJelly's layout ``events_np/...``) and returns datasets whose items are
``(float32 tensor [T, 2, 128, 128] of event counts, int label)``, ``T = cfg.time_steps``. The frames come from
SpikingJelly's own classes, ``DVS128Gesture(root, train=..., data_type='frame', frames_number=T,
split_by='number')`` and ``CIFAR10DVS(root, data_type='frame', frames_number=T, split_by='number')``: the events
of a sample are split by count into T slices and integrated into polarity count frames, cached once in
``root/frames_number_<T>_split_by_number`` (the cache is checked against ``events_np`` and rebuilt when a file is
missing or truncated; building it is serialised between processes by a lock file so distributed ranks do not race;
Ctrl-C cancels the samples not started). A truncated ``events_np`` file is named with the ``prepare_dvs.py ...
--force`` command; a cache file that fails to load names the cache to delete.

Labels: DVS128 Gesture labels are the label folder names (``class - 1`` of the label CSVs, 0..10).
SpikingJelly's ``DatasetFolder`` numbers the folders in string order ('0', '1', '10', '2', ...), which permutes
the gesture ids (harmlessly for accuracy); this module maps them back. CIFAR10-DVS labels follow the class
names in alphabetical order, which is the CIFAR-10 order (airplane 0 ... truck 9).

CIFAR10-DVS has no official split. The rule (the published one, made explicit): per class, the files in
sorted file-name order, the first ``ceil(0.9 * n)`` train and the rest test (9000 / 1000 on the real data).
Every dataset exposes ``sample_files`` (the source ``events_np/...npz`` of each sample relative to the data
root, in dataset order) so the engine can write both file lists into the run folder.

Train-side augmentation (``cfg.dvs_augment``): ``DVSAugment``, one random draw per sample applied identically
to all T frames (docs/recipe.md section 4); mixup is the engine's.

NumPy 2: SpikingJelly's frame integration and frame loading work under NumPy 2 (checked by the tests); its
CIFAR10-DVS *raw* reader does not (``np.fromstring`` binary mode, ``np.bool``), which is why raw decoding lives
in ``utils/data/aedat.py`` and ``scripts/prepare_dvs.py`` and SpikingJelly is only ever given a prepared
``events_np`` (it would otherwise try to download and convert the raw data itself).
"""
import contextlib
import io
import json
import math
import os
import pickle
import shutil
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from utils.errors import DataError, UserError

__all__ = ['build_dvs_datasets', 'DVSAugment', 'DVSFrames', 'split_cifar10dvs', 'DVS_DATASETS']

CIFAR10DVS_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')
DVS_DATASETS = ('dvs128-gesture', 'cifar10-dvs')  # their class counts: utils.data.loaders.DATASETS
_RAW_HINT = {
    'dvs128-gesture': ('DvsGesture.tar.gz (or its extracted DvsGesture/ folder) from '
                       'https://research.ibm.com/interactive/dvsgesture/'),
    'cifar10-dvs': ('the ten class archives airplane.zip ... truck.zip (or their extracted folders) from '
                    'https://figshare.com/articles/dataset/CIFAR10-DVS_New/4724671'),
}


def _get(cfg, key, default=None):
    if isinstance(cfg, dict):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


# ----------------------------------------------------------------------------------------------- augmentation

class DVSAugment:
    """Per-sample augmentation of event frames ``[T, C, H, W]`` (docs/recipe.md section 4), one draw for all T frames.

    Horizontal flip with probability 0.5, then one operation drawn uniformly from identity, shear-x,
    translate-x, translate-y, rotate and cutout. The magnitude is one of ``num_bins`` (31) values
    ``torch.linspace(-max, max, 31)``, drawn uniformly, then negated with probability 0.5, as the published
    ``SNNAugmentWide`` does (the bins already span both signs, so the flip leaves the distribution as it is: 0 with
    probability 1/31, every other |magnitude|, a multiple of max/15, with 2/31). Maxima: shear 0.3 (used as a
    ``degrees(0.3)`` shear angle), translations 5 px (truncated to an integer), rotation 30 degrees; nearest
    interpolation, zero fill. Cutout is random erasing with probability 1, area scale 0.001-0.11, aspect ratio 1,
    value 0, and has no magnitude. Random numbers come from torch's generator (seeded per DataLoader worker).
    """
    OPS = ('identity', 'shear_x', 'translate_x', 'translate_y', 'rotate', 'cutout')

    def __init__(self, num_bins=31, max_shear=0.3, max_translate=5.0, max_rotate=30.0,
                 cutout_scale=(0.001, 0.11), hflip_prob=0.5):
        self.num_bins = num_bins
        self.max = {'shear_x': max_shear, 'translate_x': max_translate, 'translate_y': max_translate,
                    'rotate': max_rotate}
        self.cutout_scale = cutout_scale
        self.hflip_prob = hflip_prob

    def bins(self, op):
        """The magnitudes ``op`` draws from: ``torch.linspace(-max, max, num_bins)`` (float32, as published)."""
        return torch.linspace(-self.max[op], self.max[op], self.num_bins)

    def sample(self, height, width, generator=None):
        """One random draw: ``{'hflip': bool, 'op': name, 'magnitude': float, 'erase': (i, j, h, w) or None}``."""
        def rand():
            return torch.rand((), generator=generator).item()

        def randint(n):
            return int(torch.randint(n, (), generator=generator).item())

        params = {'hflip': rand() < self.hflip_prob, 'op': self.OPS[randint(len(self.OPS))],
                  'magnitude': 0.0, 'erase': None}
        op = params['op']
        if op in self.max:
            mag = self.bins(op)[randint(self.num_bins)].item()
            if rand() < 0.5:
                mag = -mag
            params['magnitude'] = mag
        elif op == 'cutout':
            area = height * width
            for _ in range(10):  # torchvision RandomErasing.get_params with ratio (1, 1)
                lo, hi = self.cutout_scale
                erase_area = area * (lo + (hi - lo) * rand())
                h = w = int(round(math.sqrt(erase_area)))
                if h < height and w < width:
                    params['erase'] = (randint(height - h + 1), randint(width - w + 1), h, w)
                    break
        return params

    @staticmethod
    def apply(x, params):
        """Apply one draw to every frame of ``x`` (``[..., H, W]``)."""
        if params['hflip']:
            x = TF.horizontal_flip(x)
        op, mag = params['op'], params['magnitude']
        nearest = InterpolationMode.NEAREST
        if op == 'shear_x':
            x = TF.affine(x, angle=0.0, translate=[0, 0], scale=1.0, shear=[math.degrees(mag), 0.0],
                          interpolation=nearest, fill=0)
        elif op == 'translate_x':
            x = TF.affine(x, angle=0.0, translate=[int(mag), 0], scale=1.0, shear=[0.0, 0.0],
                          interpolation=nearest, fill=0)
        elif op == 'translate_y':
            x = TF.affine(x, angle=0.0, translate=[0, int(mag)], scale=1.0, shear=[0.0, 0.0],
                          interpolation=nearest, fill=0)
        elif op == 'rotate':
            x = TF.rotate(x, mag, interpolation=nearest, fill=0)
        elif op == 'cutout' and params['erase'] is not None:
            i, j, h, w = params['erase']
            x = TF.erase(x, i, j, h, w, torch.zeros((), dtype=x.dtype))
        return x

    def __call__(self, x):
        return self.apply(x, self.sample(x.shape[-2], x.shape[-1]))

    def __repr__(self):
        return (f'{type(self).__name__}(hflip {self.hflip_prob}, one of {self.OPS}, {self.num_bins} bins, '
                f'max {self.max}, cutout scale {self.cutout_scale})')


# ----------------------------------------------------------------------------------------------- datasets

def load_frames(path):
    """The ``frames`` array of a cached frame file, as float32, read without unpickling.

    SpikingJelly's own loader (``load_npz_frames``, the base dataset's ``loader``) passes ``allow_pickle=True``, so a
    crafted ``.npz`` in the cache could run code when read; the frames are plain numbers, so nothing is lost by
    refusing object arrays (a ``ValueError``, reported like any unreadable cache file)."""
    with np.load(path, allow_pickle=False) as npz:
        return npz['frames'].astype(np.float32)


class DVSFrames(torch.utils.data.Dataset):
    """Samples of a SpikingJelly frame dataset (``base``), selected by ``indices``, with explicit labels.

    Attributes: ``sample_files`` (source ``events_np/...npz`` of each sample, relative to the data root),
    ``targets`` (int labels), ``classes`` (names, index = label), ``transform``.
    """

    def __init__(self, base, indices, labels, sample_files, classes, transform=None, time_steps=None):
        self.base = base
        self.time_steps = time_steps  # checked against each sample read (None: any)
        self.indices = list(indices)
        self.targets = list(labels)
        self.sample_files = list(sample_files)
        self.classes = list(classes)
        self.transform = transform

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        path = self.base.samples[self.indices[i]][0]
        try:
            x = torch.from_numpy(load_frames(path))  # float32 [T, 2, H, W] event counts
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error, pickle.UnpicklingError) as e:
            frames = _cache_folder(path)
            raise DataError(f'cannot read the cached frames {path} ({type(e).__name__}: {e}).\nFix: delete '
                            f'{frames} (it is rebuilt from events_np at the next start).') from None
        if tuple(x.shape[1:]) != FRAME_SHAPE or self.time_steps not in (None, len(x)):  # another T or sensor
            raise DataError(f'the cached frames {path} have shape {list(x.shape)}, not [T={self.time_steps or "T"}, '
                            f'2, 128, 128]: the cache holds another T or another data set.\nFix: delete '
                            f'{_cache_folder(path)} (it is rebuilt from events_np at the next start).')
        if self.transform is not None:
            x = self.transform(x)
        return x, self.targets[i]


def _cache_folder(path):
    """The frame cache folder that holds the sample file ``path``."""
    frames = os.path.dirname(os.path.dirname(path))
    if os.path.basename(frames) in ('train', 'test'):  # DVS128 Gesture: <cache>/<split>/<label>/
        frames = os.path.dirname(frames)
    return frames


def split_cifar10dvs(files, labels, train_ratio=0.9):
    """Indices ``(train, test)``: per class, files in sorted name order, the first ``ceil(ratio * n)`` train."""
    by_class = {}
    for i, (f, y) in enumerate(zip(files, labels)):
        by_class.setdefault(y, []).append(i)
    train, test = [], []
    for y in sorted(by_class):
        idx = sorted(by_class[y], key=lambda i: os.path.basename(files[i]))
        cut = math.ceil(len(idx) * train_ratio)
        train += idx[:cut]
        test += idx[cut:]
    return train, test


def _prepare_command(dataset, root):
    return f'python scripts/prepare_dvs.py {dataset} --raw RAW --root {root}'


def _force_command(dataset, root):
    """The command that prepares ``root`` again, with the raw data recorded in ``prepare_dvs.json`` when known."""
    raw = 'RAW'
    with contextlib.suppress(OSError, ValueError, AttributeError):
        with open(os.path.join(root, 'prepare_dvs.json')) as f:
            raw = json.load(f).get('raw') or raw
    return f'python scripts/prepare_dvs.py {dataset} --raw {raw} --root {root} --force'


def _files_listed(folder, names, limit=5):
    names = sorted(names)
    more = f'\n  ... and {len(names) - limit} more' if len(names) > limit else ''
    return ''.join(f'\n  {os.path.join(folder, n)}' for n in names[:limit]) + more


def _truncated_npz(folder, names):
    """The ``.npz`` files among ``names`` (relative to ``folder``) that are not complete zip archives: a
    truncated file lacks the archive's directory, which is written last (a cheap check: no decompression)."""
    return [n for n in names if not zipfile.is_zipfile(os.path.join(folder, n))]


FRAME_SHAPE = (2, 128, 128)  # polarities x sensor height x width, per time step, of both DVS data sets
FRAME_FILES_CHECKED = 64  # cache files whose array header a start reads (evenly spread over the cache)


def _frames_shape(path):
    """The shape of the ``frames`` array of a cached ``.npz``, from its header alone (no decompression of the
    data); raises ``ValueError``/``OSError``/``KeyError``/``zipfile.BadZipFile`` on a damaged file."""
    with zipfile.ZipFile(path) as zf, zf.open('frames.npy') as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        return tuple(read(f)[0])


def _wrong_frames(folder, names, T):
    """Why the cache ``folder`` does not hold frames of ``T`` steps of :data:`FRAME_SHAPE` (None when it does),
    judged from the content of up to :data:`FRAME_FILES_CHECKED` files, not from the folder's name: a cache copied
    or renamed from another T, or built by another tool, would otherwise be read as it is (T would silently be
    another, or the model would fail at the first batch). ``DVSFrames`` checks every sample it reads as well."""
    names = sorted(names)
    step = max(1, len(names) // FRAME_FILES_CHECKED)
    expected = (T,) + FRAME_SHAPE
    for name in names[::step][:FRAME_FILES_CHECKED]:
        try:
            shape = _frames_shape(os.path.join(folder, name))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, zlib.error, EOFError) as e:
            return f'{name} cannot be read ({type(e).__name__}: {e})'
        if shape != expected:
            return f'{name} holds frames of shape {list(shape)}, not [T={T}, 2, 128, 128]'
    return None


class _CancellingExecutor(ThreadPoolExecutor):
    """SpikingJelly's frame-building thread pool, except that an interrupted ``with`` block (Ctrl-C) cancels the
    samples not started yet. The standard pool runs every queued sample before the process can exit (minutes on
    the real data sets); SpikingJelly offers no option, so ``_spikingjelly_frames`` swaps this class in."""

    def __exit__(self, exc_type, exc, tb):
        try:
            self.shutdown(wait=True, cancel_futures=exc_type is not None)
        except BaseException:  # interrupted while waiting for the queued samples
            self.shutdown(wait=False, cancel_futures=True)
            raise
        return False


@contextlib.contextmanager
def _cancellable_frame_building():
    import spikingjelly.datasets as sj_datasets
    original = sj_datasets.ThreadPoolExecutor
    sj_datasets.ThreadPoolExecutor = _CancellingExecutor
    try:
        yield
    finally:
        sj_datasets.ThreadPoolExecutor = original


def _check_prepared(dataset, root):
    events = os.path.join(root, 'events_np')
    what = 'DVS128 Gesture' if dataset == 'dvs128-gesture' else 'CIFAR10-DVS'
    hint = (f'Get {_RAW_HINT[dataset]}, then run\n  {_prepare_command(dataset, root)}\n'
            f'(or, to try the pipeline offline: python scripts/prepare_dvs.py {dataset} --synthetic '
            f'--raw data/{dataset}-synthetic-raw --root {root})')
    if not os.path.isdir(events):
        raise DataError(f'{what} is not prepared under --data-dir {root} (no {events}). {hint}')
    if dataset == 'dvs128-gesture':
        needed = [os.path.join(events, s, str(k)) for s in ('train', 'test') for k in range(11)]
    else:
        needed = [os.path.join(events, c) for c in CIFAR10DVS_CLASSES]
    missing = [d for d in needed if not os.path.isdir(d)]
    if missing:
        raise DataError(f'{events} is not a prepared {what} (missing {missing[0]}'
                        f'{f" and {len(missing) - 1} more folders" if len(missing) > 1 else ""}); is --data-dir '
                        f'the {what} root? {hint}')
    extra = sorted(d for d in os.listdir(events) if os.path.isdir(os.path.join(events, d))
                   and d not in (('train', 'test') if dataset == 'dvs128-gesture' else CIFAR10DVS_CLASSES))
    if extra:
        raise DataError(f'{events} has unexpected folders {extra}; is --data-dir the {what} root?')


def _npz_set(folder):
    out = set()
    for dirpath, _, files in os.walk(folder):
        rel = os.path.relpath(dirpath, folder)
        out.update(os.path.normpath(os.path.join(rel, f)) for f in files if f.endswith('.npz'))
    return out


@contextlib.contextmanager
def _cache_lock(root):
    """Serialise frame-cache building between processes (best effort: no lock on a read-only root)."""
    try:
        import fcntl
        f = open(os.path.join(root, '.frames.lock'), 'a')
    except (ImportError, OSError):
        yield
        return
    try:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def _spikingjelly_frames(dataset, root, T):
    """Build (or reuse) SpikingJelly's frame cache; returns the base datasets and the frames folder."""
    from spikingjelly.datasets.cifar10_dvs import CIFAR10DVS
    from spikingjelly.datasets.dvs128_gesture import DVS128Gesture

    def make():
        kw = dict(data_type='frame', frames_number=T, split_by='number')
        if dataset == 'dvs128-gesture':
            return DVS128Gesture(root, train=True, **kw), DVS128Gesture(root, train=False, **kw)
        return (CIFAR10DVS(root, **kw),)

    events = os.path.join(root, 'events_np')
    frames = os.path.join(root, f'frames_number_{T}_split_by_number')
    with _cache_lock(root):
        expected = _npz_set(events)
        if not expected:
            raise DataError(f'{events} holds no samples.\nFix: {_force_command(dataset, root)}')
        build = True
        if os.path.isdir(frames):
            cached = _npz_set(frames)
            truncated = _truncated_npz(frames, cached) if cached == expected else []
            wrong = _wrong_frames(frames, cached, T) if cached == expected and not truncated else None
            if cached == expected and not truncated and not wrong:
                build = False
            else:
                why = f'{len(truncated)} truncated file(s), e.g. {truncated[0]}' if truncated else \
                    wrong or 'it does not match events_np'
                print(f'{frames}: {why} (an interrupted build, or stale); rebuilding it')
                shutil.rmtree(frames)
        if build:
            truncated = _truncated_npz(events, expected)
            if truncated:
                raise DataError(f'{len(truncated)} sample file(s) under {events} are truncated or not .npz archives:'
                                f'{_files_listed(events, truncated)}\nFix: prepare the data again:\n  '
                                f'{_force_command(dataset, root)}')
            print(f'integrating {len(expected)} samples into {T} frames each (once; cached in {frames}) ...',
                  flush=True)
        quiet = io.StringIO()  # SpikingJelly prints a line per file
        try:
            with contextlib.redirect_stdout(quiet), _cancellable_frame_building():
                bases = make()
        except PermissionError as e:
            raise DataError(f'cannot write the frame cache under {root} ({e}); make the data root writable '
                            f'or copy it somewhere writable') from None
        if build:
            missing = expected - _npz_set(frames)
            if missing:  # SpikingJelly's thread pool swallows the exceptions of failed samples
                shutil.rmtree(frames)
                raise DataError(f'SpikingJelly could not integrate {len(missing)} sample file(s) into frames (damaged '
                                f'inside):{_files_listed(events, missing)}\nFix: prepare the data again:\n  '
                                f'{_force_command(dataset, root)}')
    return bases, frames


def build_dvs_datasets(cfg):
    """``(train_ds, test_ds)`` for ``cfg.dataset`` in ('dvs128-gesture', 'cifar10-dvs'); see the module docstring."""
    dataset = _get(cfg, 'dataset')
    if dataset not in DVS_DATASETS:
        raise UserError(f'dataset {dataset!r} is not an event dataset ({", ".join(DVS_DATASETS)})')
    root = _get(cfg, 'data_dir')
    if not root:
        raise UserError(f'--data-dir is required for {dataset}: the root prepared by '
                        f'{_prepare_command(dataset, "ROOT")}')
    root = os.path.expanduser(str(root))
    T = int(_get(cfg, 'time_steps'))  # >= 1: the schema's bound; num_classes is checked by utils.data.data_checks
    _check_prepared(dataset, root)
    bases, frames = _spikingjelly_frames(dataset, root, T)
    augment = DVSAugment() if _get(cfg, 'dvs_augment', False) else None

    def source(path):
        return os.path.join('events_np', os.path.relpath(path, frames))

    if dataset == 'dvs128-gesture':
        out = []
        for base, transform in zip(bases, (augment, None)):
            files = [source(p) for p, _ in base.samples]
            labels = [int(os.path.basename(os.path.dirname(p))) for p, _ in base.samples]
            out.append(DVSFrames(base, range(len(files)), labels, files, [str(k) for k in range(11)], transform, T))
        return tuple(out)
    base, = bases
    files = [source(p) for p, _ in base.samples]
    names = [os.path.basename(os.path.dirname(p)) for p, _ in base.samples]
    labels = [CIFAR10DVS_CLASSES.index(n) for n in names]
    train_idx, test_idx = split_cifar10dvs(files, labels)
    return tuple(DVSFrames(base, idx, [labels[i] for i in idx], [files[i] for i in idx], CIFAR10DVS_CLASSES, tf, T)
                 for idx, tf in ((train_idx, augment), (test_idx, None)))
