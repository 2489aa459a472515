#!/usr/bin/env python3
"""Convert a raw DVS dataset into SpikingJelly's on-disk layout (``ROOT/events_np``), or write a synthetic one.

    python scripts/prepare_dvs.py dvs128-gesture --raw RAW --root ROOT
    python scripts/prepare_dvs.py cifar10-dvs    --raw RAW --root ROOT
    python scripts/prepare_dvs.py cifar10-dvs    --synthetic --raw RAW [--root ROOT]

RAW for DVS128 Gesture: ``DvsGesture.tar.gz`` (the official archive), a folder holding it, the extracted
``DvsGesture/`` folder (``userNN_<light>.aedat`` recordings, ``userNN_<light>_labels.csv``,
``trials_to_train.txt``, ``trials_to_test.txt``), or a folder holding that folder.
RAW for CIFAR10-DVS: a folder holding the ten class archives (``airplane.zip`` ... ``truck.zip``) or the ten
extracted class folders of ``.aedat`` files (possibly one level down).

Output (what SpikingJelly's ``DVS128Gesture`` / ``CIFAR10DVS`` read; one ``.npz`` with ``t, x, y, p`` per sample):
``ROOT/events_np/{train,test}/<label 0..10>/<recording>_<k>.npz`` (DVS128 Gesture; events of a recording
with ``start <= t < end`` of each row of its label CSV, label ``class - 1``, ``k`` counting that label within
the recording) and ``ROOT/events_np/<class name>/<recording>.npz`` (CIFAR10-DVS), plus ``ROOT/prepare_dvs.json``.

The layout is built in ``ROOT/events_np.partial`` and renamed when every recording decoded, so an interrupted
run leaves no half-prepared root and re-running is safe: a prepared root is left as it is (``--force``
rebuilds it and drops the frame caches derived from the old events). Decoding: ``utils/data/aedat.py``.

``--synthetic`` writes a tiny raw dataset in the real formats into RAW (moving and flickering shapes, one
class per shape and motion, learnable by a small network in a few epochs); with ``--root`` it is then
converted like real data.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from utils.errors import exit_interrupted, exit_on_interrupt  # noqa: E402  (first: Ctrl-C from here on is one line)

INTERRUPTED = 'interrupted; ROOT/events_np was not written (the same command starts again from scratch)'
with exit_on_interrupt(INTERRUPTED):
    import argparse
    import concurrent.futures as cf
    import json
    import math
    import re
    import shutil
    import struct
    import tarfile
    import time
    import zipfile
    import zlib

    import numpy as np
    from tqdm import tqdm

    from utils.data.aedat import DecodeError, check_events, parse_aedat20_cifar10dvs, parse_aedat31
    from utils.run.atomic import replace_atomically

DATASETS = ('dvs128-gesture', 'cifar10-dvs')
CIFAR10DVS_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')
GESTURE_CLASSES = 11
SENSOR = (128, 128)
META = 'prepare_dvs.json'
MAX_ERRORS_SHOWN = 10  # recordings named in the final message (each is also printed when it fails)


class PrepareError(Exception):
    """A problem with the user's input (missing files, wrong folder): printed without a traceback."""


def save_sample(path, ev):
    """One sample as SpikingJelly stores it: a deflated ``.npz`` with the arrays t, x, y, p.

    Written like ``np.savez_compressed`` but at zlib level 1, which is about six times faster than its
    level 6 and compresses event arrays almost as well (compression, not decoding, bounds this script)."""
    with zipfile.ZipFile(path, 'w', zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for key in 'txyp':
            with zf.open(key + '.npy', 'w', force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(ev[key]), allow_pickle=False)


# ----------------------------------------------------------------------------------------------- DVS128 Gesture

def _parse_labels_csv(text, name):
    """Rows of ``class,startTime_usec,endTime_usec`` after one header line (as SpikingJelly reads them)."""
    rows = []
    for i, line in enumerate(text.splitlines()[1:], start=2):
        line = line.strip()
        if not line:
            continue
        fields = [f for f in re.split(r'[,\s]+', line) if f]
        try:
            cls, start, end = (int(f) for f in fields)
        except ValueError:
            raise DecodeError(f'{name}: line {i} is not "class,start,end": {line!r}') from None
        if not 1 <= cls <= GESTURE_CLASSES:
            raise DecodeError(f'{name}: line {i}: class {cls} outside 1..{GESTURE_CLASSES}')
        if start >= end:
            raise DecodeError(f'{name}: line {i}: the window {start} to {end} us is empty (start must be before end)')
        rows.append((cls - 1, start, end, i))
    if not rows:  # the recording would silently add no sample to its split
        raise DecodeError(f'{name} has no label rows (only a header, or empty): its recording would give no samples')
    _check_no_overlap(rows, name)
    return [row[:3] for row in rows]


def _check_no_overlap(rows, name):
    """No two label windows of a recording overlap: an event in both would be a sample of two gestures (and
    SpikingJelly, which does not check, silently cuts the shared events into both)."""
    ordered = sorted(rows, key=lambda row: row[1])
    for (_, _, end, line), (_, start, next_end, next_line) in zip(ordered, ordered[1:]):
        if start < end:
            raise DecodeError(f'{name}: the label windows of line {line} (to {end} us) and line {next_line} (from '
                              f'{start} us) overlap, so their events would be samples of both gestures; fix or '
                              f'remove one of the two lines')


def split_gesture_recording(aedat_bytes, csv_text, stem, out_dir, aedat_name, csv_name):
    """Decode one recording, cut it into labelled samples, save them; returns (samples, events)."""
    ev = parse_aedat31(aedat_bytes, aedat_name, SENSOR)
    check_events(ev, aedat_name)
    rows = _parse_labels_csv(csv_text, csv_name)
    counter = [0] * GESTURE_CLASSES
    n_events = 0
    for row, (label, start, end) in enumerate(rows, start=1):
        mask = (ev['t'] >= start) & (ev['t'] < end)
        if not mask.any():  # e.g. a recording cut short (at a packet boundary, so it decodes)
            raise DecodeError(f'{aedat_name}: no events from {start} to {end} us (label row {row} of {csv_name}, class '
                              f'{label + 1}); its events span {int(ev["t"].min())} to {int(ev["t"].max())} us: the '
                              f'recording is cut short, or the labels belong to another recording')
        sample = {k: v[mask] for k, v in ev.items()}
        save_sample(os.path.join(out_dir, str(label), f'{stem}_{counter[label]}.npz'), sample)
        counter[label] += 1
        n_events += int(mask.sum())
    return len(rows), n_events


class _GestureDir:
    def __init__(self, folder):
        self.folder = folder

    def text(self, name):
        path = os.path.join(self.folder, name)
        if not os.path.isfile(path):
            raise PrepareError(f'{path} is missing (every listed recording needs its _labels.csv, and the folder its '
                               f'trials_to_train.txt and trials_to_test.txt); extract the archive again')
        with open(path, 'rb') as f:
            return _decoded(f.read(), path)

    def recordings(self, names):
        for name in names:
            path = os.path.join(self.folder, name)
            if not os.path.isfile(path):
                raise PrepareError(f'{path} is listed in the trials files but missing')
            yield name, path, lambda p=path: open(p, 'rb').read()

    def close(self):
        pass


class _GestureTar:
    """Reads the official ``DvsGesture.tar.gz`` in two streaming passes (small files, then recordings)."""

    def __init__(self, path):
        self.path = path
        self.small = {}
        with tarfile.open(path, 'r|*') as tar:
            for m in tar:
                base = os.path.basename(m.name)
                if m.isfile() and (base.endswith('.csv') or base.endswith('.txt')) and not base.startswith('._'):
                    self.small[base] = _decoded(tar.extractfile(m).read(), f'{path}:{m.name}')

    def text(self, name):
        if name not in self.small:
            raise PrepareError(f'{self.path} has no {name}')
        return self.small[name]

    def recordings(self, names):
        wanted = set(names)
        seen = set()
        with tarfile.open(self.path, 'r|*') as tar:
            for m in tar:
                base = os.path.basename(m.name)
                if m.isfile() and base in wanted and base not in seen:
                    seen.add(base)
                    data = tar.extractfile(m).read()
                    yield base, f'{self.path}:{m.name}', lambda d=data: d
        missing = wanted - seen
        if missing:
            raise PrepareError(f'{self.path} lacks {len(missing)} listed recordings, e.g. {sorted(missing)[0]}')

    def close(self):
        pass


def _decoded(data, shown):
    """``data`` (a labels CSV or a trials file) as text, or a :class:`PrepareError` naming a file that is not UTF-8
    (a damaged download, or a binary file under a text file's name)."""
    try:
        return data.decode('utf-8')
    except UnicodeDecodeError as e:
        raise PrepareError(f'{shown} is not UTF-8 text (byte {e.start}: {data[e.start:e.start + 1]!r}): a damaged or '
                           f'foreign file; extract or download the data set again') from None


def _read_trials(src, raw):
    """``{recording: split}`` from the two trials files (each line checked by :func:`trial_names`); a recording
    listed twice (in one file or in both) is a :class:`PrepareError` naming the lines: its samples would be written
    twice, or be both train and test data."""
    trials, where = {}, {}
    for split in ('train', 'test'):
        name = f'trials_to_{split}.txt'
        for number, recording in trial_names(src.text(name), name, raw):
            if recording in where:
                raise PrepareError(f'{recording} is listed twice: {where[recording]} and {name} line {number}; a '
                                   f'recording belongs to one split once (the official files list each once).')
            trials[recording], where[recording] = split, f'{name} line {number}'
    return trials


def _open_gesture_raw(raw):
    if os.path.isfile(raw):
        return _GestureTar(raw)
    for folder in (raw, os.path.join(raw, 'DvsGesture')):
        if os.path.isfile(os.path.join(folder, 'trials_to_train.txt')):
            return _GestureDir(folder)
    archive = os.path.join(raw, 'DvsGesture.tar.gz')
    if os.path.isfile(archive):
        return _GestureTar(archive)
    raise PrepareError(f'{raw}: expected DvsGesture.tar.gz, or the extracted DvsGesture/ folder with '
                       f'trials_to_train.txt, trials_to_test.txt, the .aedat recordings and their _labels.csv')


def trial_names(text, list_name, raw):
    """``(line number, recording)`` of each recording a trials file lists, one a line. A trials file is data, and
    data does not choose where this script reads or writes: a line that names an absolute path, or a relative one
    that leaves the raw folder (``../``), is refused, naming the file and the line."""
    names = []
    for number, line in enumerate(text.splitlines(), start=1):
        name = line.strip()
        if not name:
            continue
        parts = os.path.normpath(name.replace('\\', '/')).split('/')
        if os.path.isabs(name) or name.startswith(('/', '\\')) or re.match(r'^[A-Za-z]:', name) or parts[0] == '..':
            raise PrepareError(f'{list_name} (in {raw}), line {number}: {name!r} is outside the raw folder: a trials '
                               f'file names recordings inside it (e.g. user01_fluorescent.aedat). Fix or remove that '
                               f'line; ROOT/events_np was not written.')
        names.append((number, name))
    return names


def _gesture_jobs(raw, out):
    src = _open_gesture_raw(raw)
    trials = _read_trials(src, raw)
    for split in ('train', 'test'):
        for label in range(GESTURE_CLASSES):
            os.makedirs(os.path.join(out, split, str(label)), exist_ok=True)

    def jobs():
        for name, shown, read in src.recordings(list(trials)):
            csv_name = os.path.splitext(name)[0] + '_labels.csv'  # beside the recording
            stem = os.path.splitext(os.path.basename(name))[0]  # samples go into out/<split>/<label>/ only
            csv_text = src.text(csv_name)
            yield shown, (lambda read=read, csv_text=csv_text, stem=stem, split=trials[name], shown=shown,
                          csv_name=csv_name: split_gesture_recording(
                              read(), csv_text, stem, os.path.join(out, split), shown, csv_name))
    return len(trials), jobs()


# ----------------------------------------------------------------------------------------------- CIFAR10-DVS

def convert_cifar10dvs_recording(aedat_bytes, out_path, name):
    ev = parse_aedat20_cifar10dvs(aedat_bytes, name)
    check_events(ev, name)
    save_sample(out_path, ev)
    return 1, int(ev['t'].size)


def _is_aedat(name):
    base = os.path.basename(name)
    return base.endswith('.aedat') and not base.startswith('._') and '__MACOSX' not in name


def _cifar_class_source(raw, cls):
    """(kind, where) for one class: its extracted folder, or its zip archive."""
    for base in [raw] + sorted(os.path.join(raw, d) for d in os.listdir(raw) if os.path.isdir(os.path.join(raw, d))):
        folder = os.path.join(base, cls)
        if os.path.isdir(folder):
            return 'dir', folder
        archive = os.path.join(base, cls + '.zip')
        if os.path.isfile(archive):
            return 'zip', archive
    return None, None


def _cifar_jobs(raw, out):
    if not os.path.isdir(raw):
        raise PrepareError(f'{raw}: expected a folder with the ten CIFAR10-DVS class archives '
                           f'({", ".join(c + ".zip" for c in CIFAR10DVS_CLASSES)}) or their extracted folders')
    sources = {cls: _cifar_class_source(raw, cls) for cls in CIFAR10DVS_CLASSES}
    missing = [cls for cls, (kind, _) in sources.items() if kind is None]
    if missing:
        raise PrepareError(f'{raw}: no folder or zip for the classes {", ".join(missing)} '
                           f'(expected e.g. {raw}/{missing[0]}/ or {raw}/{missing[0]}.zip)')
    listing = []
    for cls, (kind, where) in sources.items():
        os.makedirs(os.path.join(out, cls), exist_ok=True)
        if kind == 'dir':
            names = sorted(n for n in os.listdir(where) if _is_aedat(n))
        else:
            with zipfile.ZipFile(where) as zf:
                names = sorted(n for n in zf.namelist() if _is_aedat(n))
        if not names:
            raise PrepareError(f'{where}: no .aedat recordings')
        stems = [os.path.splitext(os.path.basename(n))[0] for n in names]
        if len(set(stems)) != len(stems):
            raise PrepareError(f'{where}: several recordings share a file name')
        listing.append((cls, kind, where, names))

    def jobs():
        for cls, kind, where, names in listing:
            zf = zipfile.ZipFile(where) if kind == 'zip' else None
            try:
                for n in names:
                    stem = os.path.splitext(os.path.basename(n))[0]
                    target = os.path.join(out, cls, stem + '.npz')
                    if zf is None:
                        shown = os.path.join(where, n)
                        read = (lambda p=shown: open(p, 'rb').read())
                    else:
                        shown = f'{where}:{n}'
                        data = zf.read(n)  # read in the main thread: one zip handle, no sharing
                        read = (lambda d=data: d)
                    yield shown, (lambda read=read, target=target, shown=shown:
                                  convert_cifar10dvs_recording(read(), target, shown))
            finally:
                if zf is not None:
                    zf.close()
    return sum(len(x[3]) for x in listing), jobs()


# ----------------------------------------------------------------------------------------------- driver

def _drop_frame_caches(root):
    for d in sorted(os.listdir(root)):
        if re.fullmatch(r'(frames_number_\d+_split_by_\w+|duration_\d+)', d) and os.path.isdir(os.path.join(root, d)):
            shutil.rmtree(os.path.join(root, d))
            print(f'removed the frame cache {os.path.join(root, d)} (built from the old events)')


def _convert(dataset, raw, partial, final, workers, progress):
    """Convert every recording into ``partial``; returns (recordings, samples, events, seconds)."""
    try:
        total, jobs = (_gesture_jobs if dataset == 'dvs128-gesture' else _cifar_jobs)(raw, partial)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as e:
        raise PrepareError(f'{raw}: cannot read the archive ({e}); download it again') from None

    workers = workers or min(8, os.cpu_count() or 1)
    errors, results = [], []
    t0 = time.perf_counter()
    bar = tqdm(total=total, unit='rec', desc=f'{dataset} -> {final}', disable=not progress)

    def run(shown, job):
        try:
            return job(), None
        except DecodeError as e:
            return None, str(e)
        except OSError as e:
            return None, f'{shown}: {e}'

    def handle(future):
        result, error = future.result()
        bar.update(1)
        if error is None:
            results.append(result)
        else:
            errors.append(error)
            bar.write(f'error: {error}')

    with cf.ThreadPoolExecutor(workers) as pool:
        pending = set()
        try:
            for shown, job in jobs:
                if len(pending) >= 2 * workers:  # bounds the recordings held in memory
                    done, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                    for f in done:
                        handle(f)
                pending.add(pool.submit(run, shown, job))
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as e:
            raise PrepareError(f'{raw}: the archive is corrupt or truncated ({e}); download it again') from None
        for f in cf.as_completed(pending):
            handle(f)
    bar.close()
    n_samples = sum(r[0] for r in results)
    n_events = sum(r[1] for r in results)
    seconds = time.perf_counter() - t0
    if errors:
        shown = sorted(errors)[:MAX_ERRORS_SHOWN]
        more = f'\n  ... and {len(errors) - len(shown)} more (listed above)' if len(errors) > len(shown) else ''
        raise PrepareError(f'{len(errors)} of {total} recordings could not be decoded:\n  ' + '\n  '.join(shown) +
                           f'{more}\n{final} was not written. Replace those files (download or extract them again) '
                           f'and run again.')
    return total, n_samples, n_events, seconds


def prepare(dataset, raw, root, workers=None, force=False, progress=True):
    """Convert RAW into ``ROOT/events_np``; returns the metadata dict (also written to ``ROOT/prepare_dvs.json``)."""
    if dataset not in DATASETS:
        raise PrepareError(f'unknown dataset {dataset!r}; choose one of {", ".join(DATASETS)}')
    if not os.path.exists(raw):
        raise PrepareError(f'{raw} does not exist')
    final = os.path.join(root, 'events_np')
    if os.path.isdir(final) and not force:
        meta = _read_meta(root)
        if meta.get('dataset', dataset) != dataset:
            raise PrepareError(f'{root} holds {meta["dataset"]}, not {dataset}; choose another --root')
        print(f'{final} already exists; nothing to do (--force rebuilds it)')
        return meta
    os.makedirs(root, exist_ok=True)
    partial = final + '.partial'
    if os.path.exists(partial):
        shutil.rmtree(partial)  # left by an interrupted run
    os.makedirs(partial)
    try:
        total, n_samples, n_events, seconds = _convert(dataset, raw, partial, final, workers, progress)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)  # no half-prepared folder stays behind
        raise
    if os.path.isdir(final):
        old = final + '.old'
        if os.path.exists(old):
            shutil.rmtree(old)
        os.rename(final, old)
        os.rename(partial, final)
        shutil.rmtree(old)
        _drop_frame_caches(root)
    else:
        os.rename(partial, final)
    meta = {'dataset': dataset, 'raw': os.path.abspath(raw), 'recordings': total, 'samples': n_samples,
            'events': n_events, 'seconds': round(seconds, 3)}
    if dataset == 'dvs128-gesture':
        meta['train_samples'] = _count_npz(os.path.join(final, 'train'))
        meta['test_samples'] = _count_npz(os.path.join(final, 'test'))
    def write_meta(tmp):
        with open(tmp, 'w') as f:
            json.dump(meta, f, indent=1)
    replace_atomically(os.path.join(root, META), write_meta)  # whole or absent, never through a link
    split = (f' (train {meta["train_samples"]}, test {meta["test_samples"]})' if 'train_samples' in meta else '')
    print(f'{dataset}: {total} recordings -> {n_samples} samples{split}, {n_events} events in {seconds:.1f} s '
          f'({n_events / max(seconds, 1e-9) / 1e6:.2f} M events/s) under {final}')
    return meta


def _read_meta(root):
    """``ROOT/prepare_dvs.json`` as a dict ({} when absent); a damaged one is a :class:`PrepareError` with the fix."""
    path = os.path.join(root, META)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, 'rb') as f:
            meta = json.loads(f.read().decode('utf-8'))
    except ValueError as e:  # not UTF-8 (UnicodeDecodeError), or not JSON
        meta = e
    if not isinstance(meta, dict):
        why = f'not valid UTF-8 JSON ({meta})' if isinstance(meta, ValueError) else \
            f'a {type(meta).__name__}, not a mapping'
        raise PrepareError(f'{path} is {why}: it is damaged. Prepare the root again with --force (it rewrites '
                           f'events_np and this file).')
    return meta


def _count_npz(folder):
    return sum(len([f for f in files if f.endswith('.npz')]) for _, _, files in os.walk(folder))


# ----------------------------------------------------------------------------------------------- synthetic data

SHAPES = ('square', 'hbar', 'vbar', 'cross')
MOTIONS = ('up', 'down', 'flicker')
_PACKET = struct.Struct('<HHIIIIII')


def _shape_mask(shape, cy, cx):
    """A filled square (33 px), a long horizontal or vertical bar (57 x 9 px), or a cross of both bars."""
    yy, xx = np.ogrid[:SENSOR[1], :SENSOR[0]]
    dy, dx = np.abs(yy - cy), np.abs(xx - cx)
    hbar = (dy <= 4) & (dx <= 28)
    vbar = (dx <= 4) & (dy <= 28)
    return {'square': (dy <= 16) & (dx <= 16), 'hbar': hbar, 'vbar': vbar, 'cross': hbar | vbar}[shape]


def synthetic_events(rng, cls, t0, duration=600_000, steps=24, per_step=200, noise=0.05):
    """Events of one synthetic sample of class ``cls``: shape ``SHAPES[cls % 4]`` moving up or down, or
    flickering in place (``MOTIONS[cls // 4]``), with a random start position and uniform noise events.
    Returns sorted int64 ``t`` and ``x, y, p`` in stored (sensor) coordinates."""
    shape, motion = SHAPES[cls % len(SHAPES)], MOTIONS[cls // len(SHAPES)]
    cy0, cx = 64 + int(rng.integers(-6, 7)), 64 + int(rng.integers(-16, 17))
    dt = duration // steps
    ts, xs, ys, ps = [], [], [], []
    prev = np.zeros((SENSOR[1], SENSOR[0]), bool)
    for s in range(steps + 1):
        if motion == 'flicker':
            cur = _shape_mask(shape, cy0, cx) if (s // 2) % 2 == 0 else np.zeros_like(prev)
        else:
            off = 20 - 40 * s / steps
            cur = _shape_mask(shape, round(cy0 + (off if motion == 'up' else -off)), cx)
        for pol, changed in ((1, cur & ~prev), (0, prev & ~cur)):
            y, x = np.nonzero(changed)
            keep = rng.permutation(len(x))[:per_step // 2]
            xs.append(x[keep]), ys.append(y[keep]), ps.append(np.full(len(keep), pol))
            ts.append(t0 + s * dt + rng.integers(0, dt, len(keep)))
        prev = cur
    n_noise = int(noise * sum(len(x) for x in xs)) + 1
    xs.append(rng.integers(0, SENSOR[0], n_noise)), ys.append(rng.integers(0, SENSOR[1], n_noise))
    ps.append(rng.integers(0, 2, n_noise)), ts.append(t0 + rng.integers(0, (steps + 1) * dt, n_noise))
    t, x, y, p = (np.concatenate(a).astype(np.int64) for a in (ts, xs, ys, ps))
    order = np.argsort(t, kind='stable')
    return t[order], x[order], y[order], p[order]


def aedat31_bytes(t, x, y, p, rng):
    """AEDAT 3.1 bytes: a long header, one special-event packet, then polarity packets of varying size
    (split where the timestamp overflow changes)."""
    header = (b'#!AER-DAT3.1\r\n#Format: RAW\r\n#Source 1: DVS128 (synthetic: scripts/prepare_dvs.py --synthetic)\r\n'
              + b''.join(b'#Comment %d: ' % i + b'x' * 60 + b'\r\n' for i in range(8)) + b'#!END-HEADER\r\n')
    parts = [header, _PACKET.pack(0, 1, 8, 4, 0, 1, 1, 1), struct.pack('<II', 0, int(t[0]) & 0x7FFFFFFF)]
    ovf = t >> 31
    i = 0
    while i < len(t):
        k = min(len(t), i + int(rng.integers(100, 1500)))
        k = i + int(np.searchsorted(ovf[i:k], ovf[i], side='right'))
        words = np.empty((k - i, 2), '<u4')
        words[:, 0] = (x[i:k] << 17) | (y[i:k] << 2) | (p[i:k] << 1) | 1
        words[:, 1] = t[i:k] & 0x7FFFFFFF
        parts += [_PACKET.pack(1, 1, 8, 4, int(ovf[i]), k - i, k - i, k - i), words.tobytes()]
        i = k
    return b''.join(parts)


def aedat20_cifar10dvs_bytes(t, x, y, p):
    """jAER AEDAT 2.0 bytes whose decoding with the CIFAR10-DVS convention gives back (t, x, y, p)."""
    header = (b'#!AER-DAT2.0\r\n# This is a raw AE data file - do not edit\r\n'
              b'# Data format is int32 address, int32 timestamp (8 bytes total), repeated for each event\r\n'
              b'# Timestamps tick is 1 us\r\n# synthetic: scripts/prepare_dvs.py --synthetic\r\n')
    words = np.empty((len(t), 2), '>u4')
    words[:, 0] = ((127 - x) << 8) | ((127 - y) << 1) | (1 - p)
    words[:, 1] = t
    return header + words.tobytes()


def write_synthetic(dataset, raw, per_class=None, seed=0):
    """Write a tiny raw dataset in the real format into RAW; returns the path to pass as ``--raw``."""
    rng = np.random.default_rng(seed)
    os.makedirs(raw, exist_ok=True)
    if dataset == 'dvs128-gesture':
        per_class = per_class or 8
        if per_class < 2:
            raise PrepareError('--per-class must be at least 2 for dvs128-gesture (one train, one test recording)')
        folder = os.path.join(raw, 'DvsGesture')
        os.makedirs(folder, exist_ok=True)
        lights = ('fluorescent', 'fluorescent_led', 'lab', 'led', 'natural')
        n_test = max(1, per_class // 4)
        names = {'train': [], 'test': []}
        for u in range(per_class):
            split = 'train' if u < per_class - n_test else 'test'
            name = f'user{u + 1:02d}_{lights[u % len(lights)]}'
            # the first recording starts just before 2**31 us, so its timestamps overflow (large timestamps)
            t_now = 2 ** 31 - 3_000_000 if u == 0 else int(rng.integers(1_000_000, 5_000_000))
            chunks, rows = [], []
            for cls in range(GESTURE_CLASSES):
                ev = synthetic_events(rng, cls, t_now)
                start, end = t_now, int(ev[0][-1]) + 1
                chunks.append(ev)
                rows.append(f'{cls + 1},{start},{end}')
                gap = synthetic_events(rng, 8, end + 10, duration=200_000, steps=4, per_step=20)  # unlabelled
                chunks.append(gap)
                t_now = int(gap[0][-1]) + 100_000
            t, x, y, p = (np.concatenate([c[i] for c in chunks]) for i in range(4))
            with open(os.path.join(folder, name + '.aedat'), 'wb') as f:
                f.write(aedat31_bytes(t, x, y, p, rng))
            with open(os.path.join(folder, name + '_labels.csv'), 'w') as f:
                f.write('class,startTime_usec,endTime_usec\n' + '\n'.join(rows) + '\n')
            names[split].append(name + '.aedat')
        for split, lst in names.items():
            with open(os.path.join(folder, f'trials_to_{split}.txt'), 'w') as f:
                f.write('\n'.join(lst) + '\n')
        print(f'wrote a synthetic DVS128 Gesture ({len(names["train"])} train and {len(names["test"])} test '
              f'recordings of {GESTURE_CLASSES} gestures each) to {folder}')
        return raw
    per_class = per_class or 20
    if math.ceil(0.9 * per_class) >= per_class:
        raise PrepareError('--per-class must be at least 10 for cifar10-dvs (the 90% split needs one test sample)')
    for cls, name in enumerate(CIFAR10DVS_CLASSES):
        folder = os.path.join(raw, name)
        os.makedirs(folder, exist_ok=True)
        for i in range(per_class):
            ev = synthetic_events(rng, cls, int(rng.integers(0, 1_000_000)))
            with open(os.path.join(folder, f'cifar10_{name}_{i}.aedat'), 'wb') as f:
                f.write(aedat20_cifar10dvs_bytes(*ev))
    print(f'wrote a synthetic CIFAR10-DVS ({per_class} recordings per class) to {raw}')
    return raw


# ----------------------------------------------------------------------------------------------- command line

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], epilog=__doc__.split('\n\n', 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('dataset', choices=DATASETS)
    ap.add_argument('--raw', required=True, help='the raw dataset (archive or extracted folder); '
                    'with --synthetic, the folder to write it to')
    ap.add_argument('--root', help='the prepared root to write (ROOT/events_np); pass it as --data-dir to train.py')
    ap.add_argument('--synthetic', action='store_true', help='write a tiny synthetic raw dataset into --raw first')
    ap.add_argument('--per-class', type=int, default=None,
                    help='synthetic size: recordings (Gesture, default 8) or samples per class '
                         '(CIFAR10-DVS, default 20)')
    ap.add_argument('--seed', type=int, default=0, help='synthetic data seed')
    ap.add_argument('--workers', type=int, default=None, help='threads (default: CPUs, at most 8)')
    ap.add_argument('--force', action='store_true', help='rebuild ROOT/events_np even if it exists')
    ap.add_argument('--no-progress', action='store_true')
    args = ap.parse_args(argv)
    args.raw = os.path.expanduser(args.raw)  # also in --raw=~/... and quoted paths, which the shell leaves as they are
    args.root = os.path.expanduser(args.root) if args.root is not None else None
    try:
        if args.synthetic:
            write_synthetic(args.dataset, args.raw, args.per_class, args.seed)
        elif args.root is None:
            ap.error('--root is required (unless --synthetic only writes raw data)')
        if args.root is not None:
            prepare(args.dataset, args.raw, args.root, args.workers, args.force, not args.no_progress)
    except PrepareError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    except OSError as e:  # a folder in the way, no permission, a full disk: one screen, not a traceback
        print(f'error: {f"{e.filename}: " if e.filename else ""}{e.strerror or e}\nFix the path or its permissions, '
              f'then run the same command again (ROOT/events_np is only ever replaced whole).', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        exit_interrupted(INTERRUPTED)
    return 0


if __name__ == '__main__':
    sys.exit(main())
