"""Event data: raw decoding, scripts/prepare_dvs.py, SpikingJelly's classes on the prepared layout, the
CIFAR10-DVS split and the per-sample augmentation.

Raw recordings are written here byte by byte with struct (independently of the code under test); expected
events and frames are computed here from the docs/recipe.md section 5 rules.
"""
import io
import math
import os
import random
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import load_script
from utils.data import aedat
from utils.data.dvs_data import CIFAR10DVS_CLASSES, DVSAugment, build_dvs_datasets, split_cifar10dvs
from utils.errors import UserError

prepare_dvs = load_script('prepare_dvs')


# ----------------------------------------------------------------------------------------------- raw writers

def aedat31_file(packets, header_lines=200):
    """AEDAT 3.1 bytes. ``packets``: list of (type, overflow, [(data, ts), ...], event_size)."""
    out = io.BytesIO()
    out.write(b'#!AER-DAT3.1\r\n')
    for i in range(header_lines):  # a long header
        out.write(('#Comment %d: ' % i + 'abc=' * 50 + '\r\n').encode())
    out.write(b'#!END-HEADER\r\n')
    for e_type, overflow, events, size in packets:
        n = len(events)
        out.write(struct.pack('<hhiiiiii', e_type, 1, size, 4, overflow, n, n, n))
        for data, ts in events:
            out.write(struct.pack('<II', data, ts) + b'\0' * (size - 8))
    return out.getvalue()


def polarity_word(x, y, p):
    return (x << 17) | (y << 2) | (p << 1) | 1


def random_gesture_events(rng, n, t0, overflow_every=None):
    """Sorted events as python lists, absolute times from t0 (may exceed 2**31 and 2**32)."""
    t = sorted(t0 + rng.randrange(0, 4_000_000) for _ in range(n))
    return [(ti, rng.randrange(128), rng.randrange(128), rng.randrange(2)) for ti in t]


def gesture_packets(events, rng, max_packet=50):
    """Split absolute-time events into polarity packets (low 31 bits + overflow), with special packets between."""
    packets, i = [], 0
    packets.append((0, 0, [(0x12345, 7)], 8))  # special events packet: skipped
    while i < len(events):
        ovf = events[i][0] // 2 ** 31
        j = i
        while j < len(events) and j - i < rng.randrange(1, max_packet) and events[j][0] // 2 ** 31 == ovf:
            j += 1
        j = max(j, i + 1)
        packets.append((1, ovf, [(polarity_word(x, y, p), t - ovf * 2 ** 31) for t, x, y, p in events[i:j]], 8))
        if rng.random() < 0.2:
            packets.append((2, ovf, [(1, 2), (3, 4)], 12))  # another event type, 12-byte events: skipped
        i = j
    return packets


def aedat20_file(events, header_lines=30):
    """jAER AEDAT 2.0 bytes; ``events``: (t, x_raw, y_raw, p_raw) with DVS128 address bits."""
    head = b'#!AER-DAT2.0\r\n' + b''.join(b'# header line %d ' % i + b'-' * 300 + b'\r\n' for i in range(header_lines))
    body = b''.join(struct.pack('>II', (y << 8) | (x << 1) | p, t) for t, x, y, p in events)
    return head + body


def cifar_expected(events):
    """docs/recipe.md section 5: x' = 127 - y, y' = 127 - x, p' = 1 - p."""
    return {'t': [t for t, *_ in events], 'x': [127 - y for _, x, y, _ in events],
            'y': [127 - x for _, x, y, _ in events], 'p': [1 - p for *_, p in events]}


def assert_events(ev, expected):
    for k in 'txyp':
        assert ev[k].tolist() == list(expected[k]), k


def write_gesture_raw(folder, rng, users=(('user01_led', 'train'), ('user02_lab', 'train'), ('user03_natural', 'test')),
                      t0s=None):
    """A DvsGesture/ folder; returns {(split, label): [expected event lists in file-name order]}."""
    folder = Path(folder) / 'DvsGesture'
    folder.mkdir(parents=True)
    expected = {}
    lists = {'train': [], 'test': []}
    for u, (name, split) in enumerate(users):
        t0 = (t0s or {}).get(name, 1_000_000 * (u + 1))
        events = random_gesture_events(rng, 3000, t0)
        (folder / f'{name}.aedat').write_bytes(aedat31_file(gesture_packets(events, rng)))
        # every class once, plus class 3 twice (a repeated label in one recording), windows from the events' span
        classes = list(range(1, 12)) + [3]
        edges = np.linspace(events[0][0], events[-1][0] + 1, len(classes) + 1).astype(np.int64).tolist()
        rows = [(c, edges[k], edges[k + 1]) for k, c in enumerate(classes)]
        (folder / f'{name}_labels.csv').write_text('class,startTime_usec,endTime_usec\n' +
                                                   ''.join(f'{c},{s},{e}\n' for c, s, e in rows))
        count = {}
        for c, s, e in rows:
            k = count.get(c, 0)
            count[c] = k + 1
            sel = [ev for ev in events if s <= ev[0] < e]
            expected[(split, c - 1, f'{name}_{k}.npz')] = {
                't': [v[0] for v in sel], 'x': [v[1] for v in sel], 'y': [v[2] for v in sel], 'p': [v[3] for v in sel]}
        lists[split].append(f'{name}.aedat')
    for split, names in lists.items():
        (folder / f'trials_to_{split}.txt').write_text('\n'.join(names) + '\n')
    return expected


def write_cifar_raw(folder, rng, per_class=10, extra=None):
    """Class folders of .aedat files; returns {(class, stem): expected events}."""
    expected = {}
    for cls in CIFAR10DVS_CLASSES:
        d = Path(folder) / cls
        d.mkdir(parents=True)
        n = (extra or {}).get(cls, per_class)
        for i in range(n):
            events = sorted((rng.randrange(2 ** 32), rng.randrange(128), rng.randrange(128), rng.randrange(2))
                            for _ in range(rng.randrange(20, 200)))  # a recording's timestamps increase
            (d / f'cifar10_{cls}_{i}.aedat').write_bytes(aedat20_file(events, header_lines=rng.randrange(1, 40)))
            expected[(cls, f'cifar10_{cls}_{i}')] = cifar_expected(events)
    return expected


def frames_by_count(ev, T):
    """docs/recipe.md section 5 frames, computed here: T slices of N // T events (last takes the rest), polarity
    counts."""
    n = len(ev['t'])
    frames = np.zeros((T, 2, 128, 128), np.float32)
    for i in range(T):
        lo, hi = i * (n // T), (n if i == T - 1 else (i + 1) * (n // T))
        np.add.at(frames[i], (np.asarray(ev['p'][lo:hi], int), np.asarray(ev['y'][lo:hi], int),
                              np.asarray(ev['x'][lo:hi], int)), 1)
    return frames


# ----------------------------------------------------------------------------------------------- decoding

def test_aedat31_decoding_long_header_many_packets_large_timestamps(tmp_path):
    rng = random.Random(1)
    events = random_gesture_events(rng, 2000, 2 ** 31 - 2_000_000)  # crosses 2**31: overflow 0 -> 1
    events += random_gesture_events(rng, 500, 3 * 2 ** 31 + 5)       # overflow 3: t > 2**32
    path = tmp_path / 'rec.aedat'
    packets = gesture_packets(events, rng)
    assert len([p for p in packets if p[0] == 1]) > 20 and {p[1] for p in packets} >= {0, 1, 3}
    path.write_bytes(aedat31_file(packets, header_lines=500))
    ev = aedat.read_aedat31(path)
    assert_events(ev, {'t': [e[0] for e in events], 'x': [e[1] for e in events],
                       'y': [e[2] for e in events], 'p': [e[3] for e in events]})
    assert ev['t'].dtype == np.int64 and int(ev['t'].max()) > 2 ** 32


def test_aedat31_matches_spikingjelly_reader(tmp_path):
    from spikingjelly.datasets import load_aedat_v3
    rng = random.Random(2)
    events = random_gesture_events(rng, 1500, 2 ** 31 - 1_000_000)
    path = tmp_path / 'rec.aedat'
    path.write_bytes(aedat31_file(gesture_packets(events, rng)))
    ours, theirs = aedat.read_aedat31(path), load_aedat_v3(str(path))
    for k in 'txyp':
        assert ours[k].tolist() == theirs[k].tolist(), k


@pytest.mark.parametrize('cut', ['packet', 'packet_header', 'header'])
def test_aedat31_truncated_recording_names_the_file(tmp_path, cut):
    rng = random.Random(3)
    data = aedat31_file(gesture_packets(random_gesture_events(rng, 300, 10), rng), header_lines=3)
    end = data.index(b'#!END-HEADER\r\n') + 14
    data = {'packet': data[:-5], 'packet_header': data[:end + 28 + 8 + 10], 'header': data[:end - 20]}[cut]
    path = tmp_path / 'user09_broken.aedat'
    path.write_bytes(data)
    with pytest.raises(aedat.DecodeError, match='user09_broken.aedat'):
        aedat.read_aedat31(path)


def test_aedat20_cifar10dvs_decoding_and_convention(tmp_path):
    rng = random.Random(4)
    events = [(rng.randrange(2 ** 32), rng.randrange(128), rng.randrange(128), rng.randrange(2)) for _ in range(3000)]
    events[0] = (2 ** 32 - 1, 0, 127, 1)
    path = tmp_path / 'cifar10_cat_7.aedat'
    path.write_bytes(aedat20_file(events, header_lines=100))
    assert_events(aedat.read_aedat20_cifar10dvs(path), cifar_expected(events))


def test_aedat20_matches_published_reader_under_numpy2_shim(tmp_path, monkeypatch):
    """SpikingJelly's own CIFAR10-DVS reader, with only its two NumPy-1 calls shimmed, gives the same events."""
    import spikingjelly.datasets.cifar10_dvs as sj_cifar

    class NumpyShim:
        bool = bool

        def __getattr__(self, name):
            return getattr(np, name)

        @staticmethod
        def fromstring(data, dtype):
            return np.frombuffer(data, dtype=dtype)

    monkeypatch.setattr(sj_cifar, 'np', NumpyShim())
    rng = random.Random(5)
    events = [(rng.randrange(2 ** 32), rng.randrange(128), rng.randrange(128), rng.randrange(2)) for _ in range(500)]
    path = tmp_path / 'x.aedat'
    path.write_bytes(aedat20_file(events))
    ours, theirs = aedat.read_aedat20_cifar10dvs(path), sj_cifar.CIFAR10DVS.load_origin_data(str(path))
    for k in 'txyp':
        assert ours[k].tolist() == theirs[k].tolist(), k


def test_aedat20_truncated_recording_names_the_file(tmp_path):
    path = tmp_path / 'cifar10_dog_3.aedat'
    path.write_bytes(aedat20_file([(5, 1, 2, 1), (6, 3, 4, 0)])[:-3])
    with pytest.raises(aedat.DecodeError, match='cifar10_dog_3.aedat'):
        aedat.read_aedat20_cifar10dvs(path)


# ----------------------------------------------------------------------------------------------- prepare_dvs.py

def _load_tree(root):
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            if f.endswith('.npz'):
                with np.load(os.path.join(dirpath, f)) as z:
                    out[os.path.relpath(os.path.join(dirpath, f), root)] = {k: z[k].tolist() for k in 'txyp'}
    return out


def test_prepare_gesture_layout_from_folder_and_archive(tmp_path):
    rng = random.Random(6)
    expected = write_gesture_raw(tmp_path / 'raw', rng, t0s={'user02_lab': 2 ** 31 - 100_000})
    assert prepare_dvs.main(['dvs128-gesture', '--raw', str(tmp_path / 'raw'), '--root', str(tmp_path / 'a'),
                             '--no-progress']) == 0
    tree = _load_tree(tmp_path / 'a' / 'events_np')
    assert set(tree) == {os.path.join(s, str(c), f) for s, c, f in expected}
    for (s, c, f), ev in expected.items():
        assert tree[os.path.join(s, str(c), f)] == ev
    # the official archive (not extracted) gives the same layout
    with tarfile.open(tmp_path / 'DvsGesture.tar.gz', 'w:gz') as tar:
        tar.add(tmp_path / 'raw' / 'DvsGesture', arcname='DvsGesture')
    assert prepare_dvs.main(['dvs128-gesture', '--raw', str(tmp_path / 'DvsGesture.tar.gz'),
                             '--root', str(tmp_path / 'b'), '--no-progress']) == 0
    assert _load_tree(tmp_path / 'b' / 'events_np') == tree


def test_prepare_cifar_from_folders_and_zips_and_rerun_is_safe(tmp_path, capsys):
    rng = random.Random(7)
    expected = write_cifar_raw(tmp_path / 'raw', rng, per_class=3)
    root = tmp_path / 'root'
    assert prepare_dvs.main(['cifar10-dvs', '--raw', str(tmp_path / 'raw'), '--root', str(root), '--no-progress']) == 0
    tree = _load_tree(root / 'events_np')
    assert tree == {os.path.join(c, s + '.npz'): ev for (c, s), ev in expected.items()}
    # zipped classes (the official downloads), with the class folder inside each archive
    (tmp_path / 'zips').mkdir()
    for cls in CIFAR10DVS_CLASSES:
        with zipfile.ZipFile(tmp_path / 'zips' / f'{cls}.zip', 'w', zipfile.ZIP_DEFLATED) as zf:
            for f in sorted((tmp_path / 'raw' / cls).iterdir()):
                zf.write(f, f'{cls}/{f.name}')
    assert prepare_dvs.main(['cifar10-dvs', '--raw', str(tmp_path / 'zips'), '--root', str(tmp_path / 'z'),
                             '--no-progress']) == 0
    assert _load_tree(tmp_path / 'z' / 'events_np') == tree
    # re-running on a prepared root changes nothing; --force rebuilds and drops stale frame caches
    stamp = {p: os.stat(p).st_mtime_ns for p in (root / 'events_np').rglob('*.npz')}
    capsys.readouterr()
    assert prepare_dvs.main(['cifar10-dvs', '--raw', str(tmp_path / 'raw'), '--root', str(root), '--no-progress']) == 0
    assert 'nothing to do' in capsys.readouterr().out
    assert {p: os.stat(p).st_mtime_ns for p in (root / 'events_np').rglob('*.npz')} == stamp
    (root / 'frames_number_4_split_by_number').mkdir()
    assert prepare_dvs.main(['cifar10-dvs', '--raw', str(tmp_path / 'raw'), '--root', str(root), '--force',
                             '--no-progress']) == 0
    assert _load_tree(root / 'events_np') == tree and not (root / 'frames_number_4_split_by_number').exists()


def test_prepare_reports_the_corrupt_recording_and_writes_nothing(tmp_path, capsys):
    rng = random.Random(8)
    write_cifar_raw(tmp_path / 'raw', rng, per_class=2)
    bad = tmp_path / 'raw' / 'frog' / 'cifar10_frog_1.aedat'
    bad.write_bytes(bad.read_bytes()[:-5])
    assert prepare_dvs.main(['cifar10-dvs', '--raw', str(tmp_path / 'raw'), '--root', str(tmp_path / 'r'),
                             '--no-progress']) != 0
    assert 'cifar10_frog_1.aedat' in capsys.readouterr().err
    assert not (tmp_path / 'r' / 'events_np').exists()


def test_prepare_reports_a_broken_archive_and_leaves_no_partial_folder(tmp_path, capsys):
    archive = tmp_path / 'DvsGesture.tar.gz'
    archive.write_bytes(b'\x1f\x8b' + bytes(100))  # a gzip magic, then nothing usable
    assert prepare_dvs.main(['dvs128-gesture', '--raw', str(archive), '--root', str(tmp_path / 'r'),
                             '--no-progress']) != 0
    assert 'DvsGesture.tar.gz' in capsys.readouterr().err
    assert list((tmp_path / 'r').iterdir()) == []


# ----------------------------------------------------------------------------------------------- SpikingJelly classes

def test_prepared_layout_loads_through_spikingjelly_classes(tmp_path):
    from spikingjelly.datasets.cifar10_dvs import CIFAR10DVS
    from spikingjelly.datasets.dvs128_gesture import DVS128Gesture
    rng = random.Random(9)
    g_expected = write_gesture_raw(tmp_path / 'graw', rng)
    c_expected = write_cifar_raw(tmp_path / 'craw', rng, per_class=2)
    prepare_dvs.prepare('dvs128-gesture', str(tmp_path / 'graw'), str(tmp_path / 'g'), progress=False)
    prepare_dvs.prepare('cifar10-dvs', str(tmp_path / 'craw'), str(tmp_path / 'c'), progress=False)
    T = 3
    for split in ('train', 'test'):
        events = DVS128Gesture(str(tmp_path / 'g'), train=split == 'train', data_type='event')
        frames = DVS128Gesture(str(tmp_path / 'g'), train=split == 'train', data_type='frame', frames_number=T,
                               split_by='number')
        want = {(c, f): ev for (s, c, f), ev in g_expected.items() if s == split}
        assert len(events) == len(frames) == len(want)
        for i, (path, _) in enumerate(frames.samples):
            key = (int(Path(path).parent.name), Path(path).name)
            ev, _ = events[i]
            assert {k: ev[k].tolist() for k in 'txyp'} == want[key]
            assert np.array_equal(frames[i][0], frames_by_count(want[key], T))
    frames = CIFAR10DVS(str(tmp_path / 'c'), data_type='frame', frames_number=T, split_by='number')
    assert len(frames) == len(c_expected) and frames.classes == list(CIFAR10DVS_CLASSES)
    for i, (path, label) in enumerate(frames.samples):
        assert CIFAR10DVS_CLASSES[label] == Path(path).parent.name
        assert np.array_equal(frames[i][0], frames_by_count(c_expected[(Path(path).parent.name, Path(path).stem)], T))


def test_build_dvs_datasets_items_labels_and_files(tmp_path):
    rng = random.Random(10)
    expected = write_gesture_raw(tmp_path / 'raw', rng)
    prepare_dvs.prepare('dvs128-gesture', str(tmp_path / 'raw'), str(tmp_path / 'g'), progress=False)
    cfg = {'dataset': 'dvs128-gesture', 'data_dir': str(tmp_path / 'g'), 'time_steps': 4, 'dvs_augment': False,
           'num_classes': 11}
    train, test = build_dvs_datasets(cfg)
    for ds, split in ((train, 'train'), (test, 'test')):
        want = {(c, f): ev for (s, c, f), ev in expected.items() if s == split}
        assert len(ds) == len(want) == len(ds.sample_files)
        for i in range(len(ds)):
            x, y = ds[i]
            parts = Path(ds.sample_files[i]).parts
            assert parts[:2] == ('events_np', split) and int(parts[2]) == y  # label = CSV class - 1
            assert x.dtype == torch.float32 and tuple(x.shape) == (4, 2, 128, 128)
            assert np.array_equal(x.numpy(), frames_by_count(want[(y, parts[3])], 4))
    assert sorted(set(train.targets)) == list(range(11))
    # a second build reuses the cache; a damaged cache is rebuilt
    cache = tmp_path / 'g' / 'frames_number_4_split_by_number'
    victim = next(cache.rglob('*.npz'))
    victim.unlink()
    train2, _ = build_dvs_datasets(cfg)
    assert victim.exists() and train2.sample_files == train.sample_files


def test_unprepared_data_dir_is_a_user_error_with_the_command(tmp_path):
    with pytest.raises(UserError, match='prepare_dvs.py cifar10-dvs'):
        build_dvs_datasets({'dataset': 'cifar10-dvs', 'data_dir': str(tmp_path / 'nothing'), 'time_steps': 4})


# ----------------------------------------------------------------------------------------------- split rule

def test_cifar10dvs_split_rule_first_90_percent_per_class_in_sorted_order(tmp_path):
    rng = random.Random(11)
    sizes = {cls: 10 + k for k, cls in enumerate(CIFAR10DVS_CLASSES)}  # 10..19 files: ceil matters
    write_cifar_raw(tmp_path / 'raw', rng, extra=sizes)
    prepare_dvs.prepare('cifar10-dvs', str(tmp_path / 'raw'), str(tmp_path / 'c'), progress=False)
    cfg = {'dataset': 'cifar10-dvs', 'data_dir': str(tmp_path / 'c'), 'time_steps': 2, 'num_classes': 10}
    train, test = build_dvs_datasets(cfg)
    want_train, want_test = [], []
    for cls in CIFAR10DVS_CLASSES:
        names = sorted(f'cifar10_{cls}_{i}.npz' for i in range(sizes[cls]))  # string order: _0, _1, _10, _11, _2...
        cut = math.ceil(0.9 * len(names))
        want_train += [f'events_np/{cls}/{n}' for n in names[:cut]]
        want_test += [f'events_np/{cls}/{n}' for n in names[cut:]]
    assert [Path(f).as_posix() for f in train.sample_files] == want_train
    assert [Path(f).as_posix() for f in test.sample_files] == want_test
    assert train.targets == [CIFAR10DVS_CLASSES.index(Path(f).parent.name) for f in want_train]
    assert test.targets == [CIFAR10DVS_CLASSES.index(Path(f).parent.name) for f in want_test]
    again = build_dvs_datasets(cfg)
    assert again[0].sample_files == train.sample_files and again[1].sample_files == test.sample_files
    # the rule on its own: independent of the order the files are listed in
    files = [f'c/{n}' for n in ['b', 'a', 'c', 'e', 'd']] * 1
    tr, te = split_cifar10dvs(files, [0] * 5)
    assert sorted(files[i] for i in tr) == ['c/a', 'c/b', 'c/c', 'c/d', 'c/e'] and te == []
    files = [f'{k}.npz' for k in 'jihgfedcbak']
    tr, te = split_cifar10dvs(files, [0] * 11)
    assert [files[i] for i in te] == ['k.npz']


# ----------------------------------------------------------------------------------------------- augmentation

def test_augmentation_is_one_draw_for_all_frames():
    torch.manual_seed(0)
    aug = DVSAugment()
    frame = torch.poisson(torch.full((2, 48, 48), 0.3))
    x = frame.expand(6, 2, 48, 48).clone()
    seen = set()
    for _ in range(120):
        y = aug(x)
        assert y.shape == x.shape
        assert all(torch.equal(y[t], y[0]) for t in range(1, 6))
        seen.add(torch.equal(y, x))
    assert seen == {True, False}  # identity draws and real transforms both happen
    # frames that differ: transforming the whole sample equals transforming each frame with the same draw
    x = torch.poisson(torch.full((5, 2, 48, 48), 0.3))
    for _ in range(40):
        params = aug.sample(48, 48)
        y = DVSAugment.apply(x, params)
        for t in range(5):
            assert torch.equal(y[t], DVSAugment.apply(x[t], params))


def test_augmentation_draws_and_operations():
    g = torch.Generator().manual_seed(1)
    aug = DVSAugment()
    draws = [aug.sample(128, 128, g) for _ in range(3000)]
    assert {d['op'] for d in draws} == set(DVSAugment.OPS)
    assert 0.45 < np.mean([d['hflip'] for d in draws]) < 0.55
    limits = {'shear_x': 0.3, 'translate_x': 5, 'translate_y': 5, 'rotate': 30}
    for op, m in limits.items():
        mags = {round(d['magnitude'] / m * 15, 5) for d in draws if d['op'] == op}  # linspace(-m, m, 31)
        assert mags <= {float(k) for k in range(-15, 16)} | {-0.0} and max(mags) == 15 and min(mags) == -15
    for d in draws:
        if d['op'] == 'cutout':
            i, j, h, w = d['erase']
            assert h == w and 0.001 * 128 * 128 * 0.8 <= h * w <= 0.11 * 128 * 128 * 1.2
            assert 0 <= i <= 128 - h and 0 <= j <= 128 - w
    x = torch.rand(3, 2, 128, 128) + 1
    base = {'hflip': False, 'magnitude': 0.0, 'erase': None}
    assert torch.equal(DVSAugment.apply(x, {**base, 'hflip': True, 'op': 'identity'}), x.flip(-1))
    y = DVSAugment.apply(x, {**base, 'op': 'translate_x', 'magnitude': 3.9})  # truncated to 3 px
    assert torch.equal(y[..., 3:], x[..., :-3]) and (y[..., :3] == 0).all()
    y = DVSAugment.apply(x, {**base, 'op': 'translate_y', 'magnitude': -2.0})
    assert torch.equal(y[..., :-2, :], x[..., 2:, :]) and (y[..., -2:, :] == 0).all()
    y = DVSAugment.apply(x, {**base, 'op': 'cutout', 'erase': (5, 7, 10, 10)})
    assert (y[..., 5:15, 7:17] == 0).all() and (y != 0).sum() == x.numel() - 3 * 2 * 100
    y = DVSAugment.apply(x, {**base, 'op': 'rotate', 'magnitude': 20.0})
    assert set(torch.unique(y).tolist()) <= set(torch.unique(x).tolist()) | {0.0}  # nearest: no new values
