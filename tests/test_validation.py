"""Bad input is refused up front with a one-screen message and exit 2: config values (each key's bounds, NaN and
infinity, the rules between keys, an empty YAML file), the data against the config (num_classes for every kind of
data set, ImageFolder class folders, a training set smaller than a batch), raw event recordings (no header, no
events, timestamps in no order, a recording cut at a packet boundary) and damaged .npz files (named, with the
command that repairs them, also when a DataLoader worker meets them)."""
import json
import math
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import CIFAR10_YML, IMAGENET_YML, REPO, TINY, load_script, refused, write_cifar10
from utils.config import (FLOATS, NON_NEGATIVE, POSITIVE, PROBABILITY, Bounds, ConfigError, Key, check_cross_keys,
                          load_config)
from utils.data import aedat
from utils.data.dvs_data import CIFAR10DVS_CLASSES, build_dvs_datasets
from utils.data.loaders import build_datasets
from utils.errors import EXIT_BAD_INPUT, DataError
from utils.training.main import train_main

CONFIGS = sorted(p for p in REPO.glob('*/*.yml'))
ONE_EPOCH = TINY + ['--batch-size', '4', '--val-batch-size', '4', '--epochs', '1', '--cooldown-epochs', '0']


# ----------------------------------------------------------------------------------------------- config values

def test_bounds_read_as_the_messages_show_them():
    assert (str(POSITIVE), str(NON_NEGATIVE), str(PROBABILITY)) == ('> 0', '>= 0', 'in [0, 1]')
    assert str(Bounds(0, 1, hi_open=True)) == 'in [0, 1)' and str(Bounds(hi=5, hi_open=True)) == '< 5'
    assert str(Bounds(0.5, 2.0)) == 'in [0.5, 2]' and str(Bounds(1e-8)) == '>= 1e-08'
    assert 0 in PROBABILITY and 1 in PROBABILITY and 1.01 not in PROBABILITY and -0.0 in PROBABILITY
    assert 0 not in POSITIVE and 1e-12 in POSITIVE and 1 not in Bounds(0, 1, hi_open=True)


def test_defaults_and_every_repo_config_are_valid():
    load_config([])  # every schema default lies within its bounds
    assert len(CONFIGS) >= 12
    for path in CONFIGS:
        check_cross_keys(load_config([], str(path)))  # the published recipes keep the rules between keys


BAD_VALUES = [  # (command line, key, value as shown, allowed range as shown)
    (['--batch-size', '0'], 'batch_size', '0', 'an integer >= 1'),
    (['--val-batch-size', '-2'], 'val_batch_size', '-2', 'an integer >= 1'),
    (['--epochs', '0'], 'epochs', '0', 'an integer >= 1'),
    (['--epochs', '-1'], 'epochs', '-1', 'an integer >= 1'),
    (['--time-steps', '0'], 'time_steps', '0', 'an integer >= 1'),
    (['--threads', '0'], 'threads', '0', 'an integer >= 1'),
    (['--recount', '0'], 'recount', '0', 'an integer >= 1'),
    (['--log-interval', '0'], 'log_interval', '0', 'an integer >= 1'),
    (['--workers', '-1'], 'workers', '-1', 'an integer >= 0'),
    (['--num-classes', '0'], 'num_classes', '0', 'an integer >= 2'),
    (['--num-classes', '1'], 'num_classes', '1', 'an integer >= 2'),
    (['--seed', '-3'], 'seed', '-3', 'an integer in [0, 2147483647]'),
    (['--lr', 'nan'], 'lr', 'nan', 'a finite number > 0'),
    (['--lr', '-1'], 'lr', '-1.0', 'a finite number > 0'),
    (['--lr', 'inf'], 'lr', 'inf', 'a finite number > 0'),
    (['--lr', '0'], 'lr', '0.0', 'a finite number > 0'),
    (['--min-lr', '-1e-5'], 'min_lr', '-1e-05', 'a finite number >= 0'),
    (['--warmup-lr', 'nan'], 'warmup_lr', 'nan', 'a finite number >= 0'),
    (['--weight-decay', '-0.1'], 'weight_decay', '-0.1', 'a finite number >= 0'),
    (['--opt-eps', '0'], 'opt_eps', '0.0', 'a finite number > 0'),
    (['--hflip', '2'], 'hflip', '2.0', 'a finite number in [0, 1]'),
    (['--reprob', '-0.1'], 'reprob', '-0.1', 'a finite number in [0, 1]'),
    (['--mixup-prob', '1.5'], 'mixup_prob', '1.5', 'a finite number in [0, 1]'),
    (['--mixup-switch-prob', 'nan'], 'mixup_switch_prob', 'nan', 'a finite number in [0, 1]'),
    (['--model-ema-decay', '1.5'], 'model_ema_decay', '1.5', 'a finite number in [0, 1]'),
    (['--smoothing', '1.5'], 'smoothing', '1.5', 'a finite number in [0, 1)'),
    (['--smoothing', '1'], 'smoothing', '1.0', 'a finite number in [0, 1)'),
    (['--mixup', '-0.5'], 'mixup', '-0.5', 'a finite number >= 0'),
    (['--cutmix', '-inf'], 'cutmix', '-inf', 'a finite number >= 0'),
    (['--color-jitter', '-1'], 'color_jitter', '-1.0', 'a finite number >= 0'),
    (['--crop-pct', '0'], 'crop_pct', '0.0', 'a finite number in (0, 1]'),
    (['--scale', '0', '1'], 'scale', '[0.0, 1.0]', '2 finite numbers in (0, 1]'),
    (['--std', '0.2', '0', '0.2'], 'std', '[0.2, 0.0, 0.2]', '3 finite numbers > 0'),
    (['--mean', 'nan', '0.5', '0.5'], 'mean', '[nan, 0.5, 0.5]', '3 finite numbers'),
    (['--cutmix-minmax', '0.2', '1.5'], 'cutmix_minmax', '[0.2, 1.5]', '2 finite numbers in (0, 1]'),
]


@pytest.mark.parametrize('argv, key, value, rule', BAD_VALUES, ids=[' '.join(c[0]) for c in BAD_VALUES])
def test_out_of_range_values_name_key_value_range_and_fix(argv, key, value, rule):
    with pytest.raises(ConfigError) as e:
        load_config(argv, CIFAR10_YML)
    message = str(e.value)
    assert f"config key '{key}' is {value} (from the command line); it must be {rule}." in message
    assert f'Fix: set --{key.replace("_", "-")} to {rule}.' in message


def test_a_bad_value_in_a_file_or_a_checkpoint_config_says_where_to_fix_it(tmp_path):
    path = tmp_path / 'run.yml'
    path.write_text('model: spikingformer_cifar_4_256\nhflip: 1.5\n')
    with pytest.raises(ConfigError) as e:
        load_config(['--config', str(path)])
    assert f'from config file {path}' in str(e.value) and f'set hflip in {path}' in str(e.value)
    assert 'or override it with --hflip' in str(e.value)
    load_config(['--config', str(path), '--hflip', '0.5'])  # the command line wins, the file's value is gone
    with pytest.raises(ConfigError, match="'lr' is nan \\(from the checkpoint's config\\)"):
        load_config([], base={'lr': float('nan')})


def test_scripts_declare_bounds_of_their_own_keys_the_same_way():
    extra = {'max_samples': Key(None, int, 'at most this many samples', nullable=True, bounds=Bounds(1)),
             'widths': Key((1.0,), FLOATS, 'widths', bounds=POSITIVE)}
    assert load_config(['--max-samples', '3', '--widths', '1', '2'], extra_keys=extra).max_samples == 3
    assert load_config([], extra_keys=extra).max_samples is None  # null stays allowed
    with pytest.raises(ConfigError, match="'max_samples' is 0"):
        load_config(['--max-samples', '0'], extra_keys=extra)
    with pytest.raises(ConfigError, match="'widths' is \\[1.0, -2.0\\]"):
        load_config(['--widths', '1', '-2'], extra_keys=extra)
    unbounded = {'offset': Key(0.0, float, 'any finite number'), 'limit': Key(math.inf, float, 'may be inf',
                                                                                finite=False)}
    assert load_config(['--offset', '-5', '--limit', 'inf'], extra_keys=unbounded).limit == math.inf
    with pytest.raises(ConfigError, match="'offset' is nan"):
        load_config(['--offset', 'nan'], extra_keys=unbounded)


@pytest.mark.parametrize('text', ['', '\n\n', '# only a comment\n', '{}\n'])
def test_an_empty_config_file_is_an_error(tmp_path, text):
    path = tmp_path / 'empty.yml'
    path.write_text(text)
    with pytest.raises(ConfigError, match='holds no keys'):
        load_config(['--config', str(path)])


@pytest.mark.parametrize('argv, words', [
    (['--warmup-epochs', '20', '--epochs', '5', '--cooldown-epochs', '10'],
     ['warmup_epochs is 20 but epochs is 5', 'lr would rise', '--warmup-epochs 5 or less', '--cooldown-epochs 0',
      'warmup_epochs <= epochs when cooldown_epochs > 0']),
    (['--scale', '1', '0.5'], ["'scale' is [1.0, 0.5]", 'min first', '--scale 0.5 1']),
    (['--ratio', '2', '0.5'], ["'ratio' is [2.0, 0.5]", '--ratio 0.5 2']),
    (['--mixup', '0.5', '--batch-size', '7'], ['batch_size is 7', 'even', '--batch-size 8 (or 6)', '--mixup 0']),
    (['--cutmix', '1', '--batch-size', '1'], ['batch_size is 1', '--batch-size 2,']),
])
def test_rules_between_keys(argv, words):
    with pytest.raises(ConfigError) as e:
        check_cross_keys(load_config(argv, CIFAR10_YML))
    for word in words:
        assert word in str(e.value), (word, str(e.value))


@pytest.mark.parametrize('argv', [
    ['--warmup-epochs', '20', '--epochs', '5', '--cooldown-epochs', '0'],  # a short trial that ends in its warmup
    ['--warmup-epochs', '5', '--epochs', '5', '--cooldown-epochs', '10'],  # the warmup ends with the schedule
    ['--mixup', '0', '--cutmix', '0', '--batch-size', '7'],                # no mixing: any batch size
])
def test_consistent_keys_pass(argv):
    check_cross_keys(load_config(argv, CIFAR10_YML))


@pytest.mark.parametrize('argv, key', [
    (['--batch-size', '0'], 'batch_size'), (['--epochs', '0'], 'epochs'), (['--epochs', '-1'], 'epochs'),
    (['--lr', 'nan'], 'lr'), (['--lr', '-1'], 'lr'), (['--time-steps', '0'], 'time_steps'),
    (['--threads', '0'], 'threads'), (['--workers', '-1'], 'workers'), (['--smoothing', '1.5'], 'smoothing'),
    (['--hflip', '2'], 'hflip'), (['--num-classes', '0'], 'num_classes'),
    # (a warmup longer than the epochs with a cooldown is clipped by train.py: tests/test_smoke_runs.py)
    (['--opt', 'adamx'], "'opt' is 'adamx'"), (['--sched', 'cosinus'], "'sched' is 'cosinus'"),
])
def test_train_py_refuses_bad_values_before_anything_runs(tmp_path, capsys, argv, key):
    out = tmp_path / 'run'
    refused(capsys, train_main, ['--config', CIFAR10_YML, '--data-dir', str(tmp_path / 'nowhere'),
                                 '--output', str(out)] + argv, key, 'Fix:')
    assert not out.exists()


# ----------------------------------------------------------------------------------------------- data vs config

def test_num_classes_must_match_cifar_and_digits(tmp_path, capsys):
    data = write_cifar10(tmp_path / 'cifar', test=8)
    out = tmp_path / 'run'
    refused(capsys, train_main, ['--config', CIFAR10_YML, '--data-dir', str(data), '--num-classes', '5',
                                 '--output', str(out)] + ONE_EPOCH,
            'num_classes is 5', '10 classes', '--num-classes 10')
    assert not out.exists()
    cfg = load_config(['--dataset', 'digits', '--num-classes', '7'])
    with pytest.raises(DataError, match='(?s)num_classes is 7, but the digits data has 10.*--num-classes 10'):
        build_datasets(cfg, train=False)
    cfg = load_config(['--dataset', 'cifar100', '--data-dir', str(data)])
    with pytest.raises(DataError, match='CIFAR-100 not found'):
        build_datasets(cfg)


def test_cifar_labels_outside_the_classes_are_refused(tmp_path):
    data = write_cifar10(tmp_path / 'cifar', test=8, label_max=12)
    with pytest.raises(DataError, match='labels from 0 to 12, outside 0..9'):
        build_datasets(load_config(['--config', CIFAR10_YML, '--data-dir', str(data)]))


def test_a_training_set_smaller_than_one_batch_is_refused(tmp_path, capsys):
    data = write_cifar10(tmp_path / 'cifar', 2, test=8)  # 10 training samples
    refused(capsys, train_main, ['--config', CIFAR10_YML, '--data-dir', str(data), '--output', str(tmp_path / 'run')]
            + ONE_EPOCH + ['--batch-size', '16'], '10 samples', 'batch_size 16', '--batch-size 10')


def write_image_folder(root: Path, layout: dict) -> Path:
    """``{split: {class: number of images}}`` as an ImageFolder tree (a class with 0 images is an empty folder)."""
    rng = np.random.default_rng(0)
    for split, classes in layout.items():
        for cls, n in classes.items():
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(root / split / cls / f'{i}.png')
    return root


def image_folder_cfg(root, classes=3):
    return load_config(['--config', IMAGENET_YML, '--data-dir', str(root), '--num-classes', str(classes)])


def test_image_folder_classes_are_checked(tmp_path, capsys):
    good = write_image_folder(tmp_path / 'good', {s: {'n01': 1, 'n02': 1, 'n03': 1} for s in ('train', 'val')})
    train, val = build_datasets(image_folder_cfg(good))
    assert train.reader.class_to_idx == val.reader.class_to_idx == {'n01': 0, 'n02': 1, 'n03': 2}
    # an empty class folder would shift the labels of n03 (2 in val, 1 in train)
    empty = write_image_folder(tmp_path / 'empty', {'train': {'n01': 1, 'n02': 0, 'n03': 1},
                                                    'val': {'n01': 1, 'n02': 1, 'n03': 1}})
    with pytest.raises(DataError) as e:
        build_datasets(image_folder_cfg(empty))
    assert str(empty / 'train') in str(e.value) and 'hold no images: n02' in str(e.value)
    differ = write_image_folder(tmp_path / 'differ', {'train': {'n01': 1, 'n02': 1, 'n03': 1},
                                                      'val': {'n01': 1, 'n02': 1, 'n04': 1}})
    with pytest.raises(DataError, match='only in train/: n03; only in val/: n04'):
        build_datasets(image_folder_cfg(differ))
    loose = write_image_folder(tmp_path / 'loose', {s: {'n01': 1, 'n02': 1} for s in ('train', 'val')})
    Image.new('RGB', (8, 8)).save(loose / 'val' / 'stray.png')
    with pytest.raises(DataError, match="images outside its class folders"):
        build_datasets(image_folder_cfg(loose, 2))
    # the published ImageNet config (1000 classes) on a 3-class tree: refused before training, not at a late label
    refused(capsys, train_main, ['--config', IMAGENET_YML, '--data-dir', str(good), '--output', str(tmp_path / 'run')]
            + ONE_EPOCH, 'num_classes is 1000', '3 class folders', '--num-classes 3')


# ----------------------------------------------------------------------------------------------- raw event data

prepare_dvs = load_script('prepare_dvs')
AEDAT2_HEADER = b'#!AER-DAT2.0\r\n# This is a raw AE data file\r\n'


def aedat20(t, header=AEDAT2_HEADER, seed=0):
    """A CIFAR10-DVS recording: jAER AEDAT 2.0 with big-endian (address, timestamp) pairs at timestamps ``t``."""
    addr = np.random.default_rng(seed).integers(0, 2 ** 15, len(t))
    return header + np.stack([addr, np.asarray(t)], 1).astype('>u4').tobytes()


def write_cifar10dvs_raw(raw: Path, per_class=2, events=60) -> Path:
    for k, cls in enumerate(CIFAR10DVS_CLASSES):
        (raw / cls).mkdir(parents=True)
        for i in range(per_class):
            (raw / cls / f'cifar10_{cls}_{i}.aedat').write_bytes(aedat20(np.arange(events) * 10 + i, seed=k * 10 + i))
    return raw


@pytest.mark.parametrize('case, data, words', [
    ('headerless', np.random.default_rng(1).integers(0, 256, 800, dtype=np.uint8).tobytes(),
     ['not an AEDAT 2.0 recording', '#!AER-DAT2.0']),
    ('no events', AEDAT2_HEADER, ['no events']),
    ('shuffled', aedat20(np.random.default_rng(2).permutation(200) * 7), ['go back in time']),
])
def test_implausible_cifar10dvs_recordings_are_named(tmp_path, capsys, case, data, words):
    raw = write_cifar10dvs_raw(tmp_path / 'raw')
    bad = raw / 'frog' / 'cifar10_frog_1.aedat'
    bad.write_bytes(data)
    assert prepare_dvs.main(['cifar10-dvs', '--raw', str(raw), '--root', str(tmp_path / 'root'),
                             '--no-progress']) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert str(bad) in err and '1 of 20 recordings' in err and all(w in err for w in words), err
    assert not (tmp_path / 'root' / 'events_np').exists()


def test_a_few_out_of_order_events_are_kept():
    t = np.arange(1000)
    t[500], t[501] = t[501], t[500]  # one backward step in 999, as real sensors deliver
    aedat.check_events({'t': t}, 'rec.aedat')
    t[::2] = t[::2][::-1]
    with pytest.raises(aedat.DecodeError, match='rec.aedat: timestamps go back in time'):
        aedat.check_events({'t': t}, 'rec.aedat')


def aedat31(packets):
    """AEDAT 3.1 bytes: header, then polarity packets of (timestamp, x, y, p) events."""
    out = [b'#!AER-DAT3.1\r\n#Format: RAW\r\n#!END-HEADER\r\n']
    for events in packets:
        n = len(events)
        out.append(struct.pack('<HHIIIIII', 1, 1, 8, 4, 0, n, n, n))
        out += [struct.pack('<II', (x << 17) | (y << 2) | (p << 1) | 1, t) for t, x, y, p in events]
    return b''.join(out)


def test_a_gesture_recording_cut_at_a_packet_boundary_is_named(tmp_path, capsys):
    folder = tmp_path / 'raw' / 'DvsGesture'
    folder.mkdir(parents=True)
    first = [(1000 + 10 * i, i % 128, 5, i % 2) for i in range(50)]
    second = [(5000 + 10 * i, 7, i % 128, 1) for i in range(50)]
    data = aedat31([first, second])
    cut = data[:len(aedat31([first]))]  # the recording cut after its first packet
    assert aedat.parse_aedat31(cut, 'cut')['t'].size == 50  # it decodes: the cut is at a packet boundary
    (folder / 'user01_led.aedat').write_bytes(cut)
    (folder / 'user01_led_labels.csv').write_text('class,startTime_usec,endTime_usec\n1,1000,1500\n2,5000,5500\n')
    (folder / 'trials_to_train.txt').write_text('user01_led.aedat\n')
    (folder / 'trials_to_test.txt').write_text('')
    assert prepare_dvs.main(['dvs128-gesture', '--raw', str(tmp_path / 'raw'), '--root', str(tmp_path / 'root'),
                             '--no-progress']) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert 'user01_led.aedat: no events from 5000 to 5500 us (label row 2 of user01_led_labels.csv, class 2)' in err
    assert 'cut short' in err and not (tmp_path / 'root' / 'events_np').exists()


# ----------------------------------------------------------------------------------------------- damaged .npz

@pytest.fixture()
def dvs_root(tmp_path):
    raw = write_cifar10dvs_raw(tmp_path / 'raw')
    prepare_dvs.prepare('cifar10-dvs', str(raw), str(tmp_path / 'root'), progress=False)
    return tmp_path / 'root'


def dvs_cfg(root):
    return {'dataset': 'cifar10-dvs', 'data_dir': str(root), 'time_steps': 2, 'num_classes': 10}


def test_dvs_num_classes_must_match(dvs_root):
    cfg = load_config(['--dataset', 'cifar10-dvs', '--data-dir', str(dvs_root), '-T', '2', '--num-classes', '5'])
    with pytest.raises(DataError, match='(?s)num_classes is 5, but the cifar10-dvs data .*has 10 classes.*'
                                        '--num-classes 10'):
        build_datasets(cfg)


def test_a_truncated_events_file_is_named_with_the_prepare_command(dvs_root):
    victim = dvs_root / 'events_np' / 'cat' / 'cifar10_cat_1.npz'
    victim.write_bytes(victim.read_bytes()[:-30])
    with pytest.raises(DataError) as e:
        build_dvs_datasets(dvs_cfg(dvs_root))
    raw = json.loads((dvs_root / 'prepare_dvs.json').read_text())['raw']
    assert str(victim) in str(e.value) and '1 sample file(s)' in str(e.value)
    assert f'python scripts/prepare_dvs.py cifar10-dvs --raw {raw} --root {dvs_root} --force' in str(e.value)
    assert not (dvs_root / 'frames_number_2_split_by_number').exists()  # no partial cache left behind


def test_a_truncated_frame_cache_file_is_rebuilt(dvs_root, capsys):
    train, test = build_dvs_datasets(dvs_cfg(dvs_root))
    victim = next((dvs_root / 'frames_number_2_split_by_number').rglob('*.npz'))
    expected = {f: train[i][0] for i, f in enumerate(train.sample_files)}
    victim.write_bytes(victim.read_bytes()[:50])
    capsys.readouterr()
    train, test = build_dvs_datasets(dvs_cfg(dvs_root))
    assert 'truncated' in capsys.readouterr().out
    assert all(torch.equal(train[i][0], expected[f]) for i, f in enumerate(train.sample_files))


def test_a_damaged_cache_file_met_by_a_dataloader_worker_is_one_screen(dvs_root, capsys):
    train, _ = build_dvs_datasets(dvs_cfg(dvs_root))
    victim = Path(train.base.samples[train.indices[0]][0])
    with zipfile.ZipFile(victim, 'w') as zf:  # a valid archive (it passes the start-up check) of a broken array
        zf.writestr('frames.npy', b'\x93NUMPY garbage')
    loader = torch.utils.data.DataLoader(train, batch_size=2, num_workers=1)
    err = refused(capsys, lambda argv: list(loader), None)
    assert err.startswith(f'error: cannot read the cached frames {victim}')
    assert 'DataLoader worker' not in err and 'frames_number_2_split_by_number' in err
