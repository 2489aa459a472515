"""Event data that would give silent wrong samples or tracebacks: DVS128 Gesture label windows that overlap, a
recording in both trials files, missing / non-UTF-8 / damaged input files of scripts/prepare_dvs.py and its
prepare_dvs.json (each one screen, exit 2, no events_np); a frame cache whose content is of another T, whatever its
folder name says (rebuilt at the start; a single wrong file is named when read)."""
import shutil

import numpy as np
import pytest

from helpers import load_script
from utils.data.dvs_data import build_dvs_datasets
from utils.errors import EXIT_BAD_INPUT, DataError

prepare_dvs = load_script('prepare_dvs')


@pytest.fixture(scope='module')
def gesture_raw(tmp_path_factory):
    """A synthetic DvsGesture/ folder: user01 (train) and user02 (test), 11 labelled gestures each."""
    raw = tmp_path_factory.mktemp('gesture') / 'raw'
    prepare_dvs.write_synthetic('dvs128-gesture', str(raw), per_class=2)
    return raw / 'DvsGesture'


def _prepare_refused(capsys, folder, root, *words):
    code = prepare_dvs.main(['dvs128-gesture', '--raw', str(folder), '--root', str(root), '--no-progress'])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT and 'Traceback' not in err and err.startswith('error: '), (code, err)
    for word in words:
        assert word in err, (word, err)
    assert not (root / 'events_np').exists() and not (root / 'events_np.partial').exists()
    return err


def _copy(gesture_raw, tmp_path):
    folder = tmp_path / 'DvsGesture'
    shutil.copytree(gesture_raw, folder)
    return folder


def test_overlapping_label_windows_are_refused_naming_both_lines(gesture_raw, tmp_path, capsys):
    folder = _copy(gesture_raw, tmp_path)
    csv = folder / 'user01_fluorescent_labels.csv'
    lines = csv.read_text().splitlines()
    second_start = int(lines[2].split(',')[1])
    cls, start, _ = lines[1].split(',')
    lines[1] = f'{cls},{start},{second_start + 1000}'  # row 1 now runs into row 2
    csv.write_text('\n'.join(lines) + '\n')
    _prepare_refused(capsys, folder, tmp_path / 'root', 'user01_fluorescent_labels.csv', 'line 2', 'line 3',
                     'overlap')


def test_an_empty_label_window_is_refused(gesture_raw, tmp_path, capsys):
    folder = _copy(gesture_raw, tmp_path)
    csv = folder / 'user02_fluorescent_led_labels.csv'
    lines = csv.read_text().splitlines()
    cls, start, _ = lines[3].split(',')
    lines[3] = f'{cls},{start},{start}'
    csv.write_text('\n'.join(lines) + '\n')
    _prepare_refused(capsys, folder, tmp_path / 'root', 'user02_fluorescent_led_labels.csv', 'line 4', 'empty')


def test_a_labels_file_without_rows_is_refused(gesture_raw, tmp_path, capsys):
    folder = _copy(gesture_raw, tmp_path)
    (folder / 'user01_fluorescent_labels.csv').write_text('class,startTime_usec,endTime_usec\n')
    _prepare_refused(capsys, folder, tmp_path / 'root', 'user01_fluorescent_labels.csv has no label rows')


def test_a_recording_in_both_trials_files_is_refused(gesture_raw, tmp_path, capsys):
    folder = _copy(gesture_raw, tmp_path)
    with open(folder / 'trials_to_test.txt', 'a') as f:
        f.write('\nuser01_fluorescent.aedat\n')
    _prepare_refused(capsys, folder, tmp_path / 'root', 'user01_fluorescent.aedat is listed twice',
                     'trials_to_train.txt line 1', 'trials_to_test.txt line 3')


@pytest.mark.parametrize('damage, words', [
    ('missing labels', ('user02_fluorescent_led_labels.csv is missing',)),
    ('binary trials', ('trials_to_train.txt is not UTF-8 text',)),
    ('binary labels', ('user01_fluorescent_labels.csv is not UTF-8 text',))])
def test_missing_or_non_utf8_input_files(gesture_raw, tmp_path, capsys, damage, words):
    folder = _copy(gesture_raw, tmp_path)
    if damage == 'missing labels':
        (folder / 'user02_fluorescent_led_labels.csv').unlink()
    elif damage == 'binary trials':
        (folder / 'trials_to_train.txt').write_bytes(b'user01_fluorescent.aedat\n\xff\xfe\x00\x01\n')
    else:
        (folder / 'user01_fluorescent_labels.csv').write_bytes(b'class,startTime_usec\n\x89PNG\r\n\x1a\n')
    _prepare_refused(capsys, folder, tmp_path / 'root', *words)


@pytest.mark.parametrize('content', [b'{"dataset": "dvs128-ges', b'\xff\xfe{}', b'[1, 2]'])
def test_a_damaged_prepare_dvs_json(gesture_raw, tmp_path, capsys, content):
    root = tmp_path / 'root'
    (root / 'events_np').mkdir(parents=True)  # a prepared root: prepare_dvs.json is read, not rewritten
    (root / 'prepare_dvs.json').write_bytes(content)
    code = prepare_dvs.main(['dvs128-gesture', '--raw', str(gesture_raw), '--root', str(root), '--no-progress'])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT and 'Traceback' not in err, err
    assert 'prepare_dvs.json' in err and '--force' in err and (root / 'prepare_dvs.json').read_bytes() == content


def test_a_frame_cache_of_another_t_is_rebuilt_whatever_its_name(synthetic_roots, tmp_path, capsys):
    root = tmp_path / 'cifar10-dvs'
    shutil.copytree(synthetic_roots['cifar10-dvs'] / 'events_np', root / 'events_np')
    cfg = dict(dataset='cifar10-dvs', data_dir=str(root), time_steps=2)
    assert build_dvs_datasets(cfg)[1][0][0].shape == (2, 2, 128, 128)
    # the T=2 cache under the T=3 name (copied or renamed by hand): its content says T=2, so it is rebuilt
    (root / 'frames_number_2_split_by_number').rename(root / 'frames_number_3_split_by_number')
    capsys.readouterr()
    train, test = build_dvs_datasets(dict(cfg, time_steps=3))
    assert 'holds frames of shape [2, 2, 128, 128], not [T=3, 2, 128, 128]' in capsys.readouterr().out
    assert train[0][0].shape == test[0][0].shape == (3, 2, 128, 128)
    # one file of another shape, past the files a start looks at, is named when it is read
    path = test.base.samples[test.indices[0]][0]
    np.savez_compressed(path, frames=np.zeros((3, 2, 64, 64), np.float32))
    with pytest.raises(DataError, match=r'(?s)have shape \[3, 2, 64, 64\], not \[T=3, 2, 128, 128\].*Fix: delete'):
        test[0]
