"""A training data stream that can stop after any batch and continue exactly there: every random draw of an epoch is
a function of (seed, rank, epoch, position) rather than of a generator that runs through the epoch.

Why not save the generators' states instead: the draws of an epoch happen in places whose state cannot be captured
at a step boundary. Loader workers each run their own stream over the batches they happen to get (and the number of
workers may differ on resume); timm's ``PrefetchLoader`` random-erases batch i+1 before the engine has finished batch
i; a generator state saved at the boundary is therefore already one batch ahead. Keyed seeding makes each draw
independent of what ran before it, whichever process or worker runs it, so a resumed epoch only has to skip the
batches already trained:

* :class:`SeededSamples` wraps the training data set: sample number ``p`` of the epoch (its position in this rank's
  order) is loaded and augmented (crop, flip, RandAugment, the DVS augmentation) with Python's, NumPy's and torch's
  generators seeded from (seed, rank, epoch, p). It receives ``(p, index)`` pairs from :class:`PositionedSampler`
  and returns the position with the sample so that the collate function knows the batch number.
* :class:`SeededBatchCollate` strips the positions and runs the collate function (timm's ``FastCollateMixup``, its
  mixup/cutmix draws included) under generators seeded from (seed, rank, epoch, batch number).
* :class:`SeededPerBatch` does the same for a function applied once per batch in the main process: the prefetcher's
  random erasing, the engine's batch ``Mixup`` (event data).
* :class:`PositionedSampler` wraps the loader's sampler (``RandomSampler`` or ``DistributedSampler``, whose order
  is a function of the epoch and of the generators seeded at the epoch's start, ``utils.training.main.seed_everything``)
  and leaves out the first ``start`` samples on resume.

Each keyed draw runs inside :func:`keyed_generators`, which restores the generators' previous states afterwards, so
nothing outside it (the main process's streams, the sampler's order) sees a difference. The draws differ from those
of a loader that seeds each worker once (the distributions are the same); in exchange they no longer depend on the
number of workers either. ``utils.data.loaders.build_loaders`` installs all of it (:func:`make_resumable`).
"""
import contextlib
import random
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset


def derived_seed(*key: int) -> int:
    """A 31-bit seed from a key of non-negative integers (NumPy's ``SeedSequence``: well mixed, stable)."""
    return int(np.random.SeedSequence([int(k) for k in key]).generate_state(1)[0]) % 2 ** 31


@contextlib.contextmanager
def keyed_generators(seed: int, devices: Sequence[torch.device] = ()) -> Iterator[None]:
    """Python's ``random``, NumPy's global generator and torch's (CPU and the CUDA ``devices``) seeded with ``seed``
    inside the block, their previous states restored after it."""
    py_state, np_state = random.getstate(), np.random.get_state()
    cuda = [d for d in devices if d.type == 'cuda']
    with torch.random.fork_rng(devices=cuda, enabled=True):
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class EpochKey:
    """(seed, rank, epoch), shared by the wrappers of one loader; the epoch is set before each epoch's iterator."""

    def __init__(self, seed: int, rank: int):
        self.seed, self.rank, self.epoch = seed, rank, 0

    def __call__(self, kind: int, number: int) -> int:
        return derived_seed(self.seed, self.rank, self.epoch, kind, number)


SAMPLE, BATCH, MAIN = 0, 1, 2  # the kinds of keyed draws, so that sample 3 and batch 3 draw different numbers


class DatasetView(Dataset):
    """A data set over another one (``self.dataset``) that forwards its ``transform``, which timm's loader sets on the
    data set it is given: the wrapped set's transform is the one applied."""

    @property
    def transform(self):
        return self.dataset.transform

    @transform.setter
    def transform(self, value):
        self.dataset.transform = value


class SeededSamples(DatasetView):
    """The training data set, each sample loaded under generators keyed by its position in the epoch (see above);
    forwards ``transform`` (timm's loader sets it) and the attributes of the data set it wraps. Indexed with a plain
    index (outside the loader) it is the wrapped data set, drawing from the global generators."""

    def __init__(self, dataset, key: EpochKey):
        self.dataset, self.key = dataset, key

    def __getattr__(self, name):  # sample_files, classes, ...
        if name == 'dataset':
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, item):
        if not isinstance(item, tuple):  # indexed directly, not through PositionedSampler: the data set's own sample
            return self.dataset[item]
        position, index = item
        with keyed_generators(self.key(SAMPLE, position)):
            sample = self.dataset[index]
        return position, sample


class SeededBatchCollate:
    """The collate function of the loader, run under generators keyed by the batch number of its samples."""

    def __init__(self, collate, key: EpochKey, batch_size: int):
        self.collate, self.key, self.batch_size = collate, key, batch_size

    def __getattr__(self, name):  # mixup_enabled and the rest of timm's mixing object
        if name == 'collate':
            raise AttributeError(name)
        return getattr(self.collate, name)

    def __setattr__(self, name, value):
        if name in ('collate', 'key', 'batch_size') or not hasattr(self, 'collate'):
            object.__setattr__(self, name, value)
        else:
            setattr(self.collate, name, value)

    def __call__(self, items):
        number = items[0][0] // self.batch_size
        with keyed_generators(self.key(BATCH, number)):
            return self.collate([sample for _, sample in items])


class SeededPerBatch:
    """A function called once per batch in the main process (random erasing, batch mixup), each call under
    generators keyed by its batch number; ``restart(first)`` at each epoch's start (the first batch's number)."""

    def __init__(self, function, key: EpochKey, device: Optional[torch.device] = None):
        self.function, self.key, self.devices, self.number = function, key, [device] if device else [], 0

    def __getattr__(self, name):
        if name == 'function':
            raise AttributeError(name)
        return getattr(self.function, name)

    def __setattr__(self, name, value):
        if name in ('function', 'key', 'devices', 'number') or not hasattr(self, 'function'):
            object.__setattr__(self, name, value)
        else:
            setattr(self.function, name, value)

    def restart(self, first: int) -> None:
        self.number = first

    def __call__(self, *args, **kwargs):
        with keyed_generators(self.key(MAIN, self.number), self.devices):
            self.number += 1
            return self.function(*args, **kwargs)


class PositionedSampler:
    """Yields ``(position, index)`` for the sampler it wraps, from position ``start`` on (the first ``start`` indices
    of the epoch's order are drawn and left out); ``len`` is the whole epoch's."""

    def __init__(self, sampler):
        self.sampler, self.start = sampler, 0

    def __len__(self):
        return len(self.sampler)

    def __iter__(self):
        start, self.start = self.start, 0  # one resumed epoch; the next starts at 0
        for position, index in enumerate(self.sampler):
            if position >= start:
                yield position, index


class ResumableStream:
    """The wrappers installed on one training loader, and what the epoch loop calls: :meth:`start_epoch`."""

    def __init__(self, key: EpochKey, sampler: PositionedSampler, batch_size: int, per_batch: list):
        self.key, self.sampler, self.batch_size, self.per_batch = key, sampler, batch_size, per_batch

    def start_epoch(self, epoch: int, first_batch: int = 0) -> None:
        """Before the epoch's iterator is created: the epoch's keys, and the batches already trained left out."""
        self.key.epoch = epoch
        self.sampler.start = first_batch * self.batch_size
        for function in self.per_batch:
            function.restart(first_batch)


def _data_loader(loader):
    return getattr(loader, 'loader', loader)  # timm's PrefetchLoader wraps the DataLoader


def make_resumable(loader, device: Optional[torch.device] = None, batch_mixup=None):
    """Install the keyed streams on a training loader whose data set is a :class:`SeededSamples` (the DataLoader
    does not let its data set be replaced, so ``utils.data.loaders.build_loaders`` wraps it before building the loader):
    its sampler, its collate function and, on timm's ``PrefetchLoader``, its random erasing; ``batch_mixup`` (the
    engine's ``Mixup`` for event data) is wrapped too. Returns ``(stream, batch_mixup)``: call
    ``stream.start_epoch`` before every epoch, and give the engine the returned ``batch_mixup``."""
    data_loader = _data_loader(loader)
    dataset = data_loader.dataset
    if not isinstance(dataset, SeededSamples) or data_loader.batch_sampler is None:
        raise TypeError('make_resumable needs a DataLoader with a batch sampler over a SeededSamples data set')
    key = dataset.key
    positioned = PositionedSampler(data_loader.batch_sampler.sampler)
    data_loader.batch_sampler.sampler = positioned  # BatchSampler reads it at each iteration; DataLoader allows this
    data_loader.collate_fn = SeededBatchCollate(data_loader.collate_fn, key, data_loader.batch_size)
    per_batch = []
    if getattr(loader, 'random_erasing', None) is not None:
        loader.random_erasing = SeededPerBatch(loader.random_erasing, key, device)
        per_batch.append(loader.random_erasing)
    if batch_mixup is not None:
        batch_mixup = SeededPerBatch(batch_mixup, key, device)
        per_batch.append(batch_mixup)
    return ResumableStream(key, positioned, data_loader.batch_size, per_batch), batch_mixup
