"""Data files cannot choose where to write: a trials list of scripts/prepare_dvs.py that points outside --raw is
refused naming the line, and a checkpoint's recorded data_dir / dataset_download never make test.py or the report
scripts download or create folders (only command-line flags do)."""
import os
import shutil
from pathlib import Path

import pytest
import torch

from helpers import load_script, refused, tiny_cifar_run
from utils.errors import DataError
from utils.training.main import test_main as evaluate_main  # not named test_* (pytest would collect it)

prepare_dvs = load_script('prepare_dvs')


@pytest.fixture(scope='module')
def gesture_raw(tmp_path_factory):
    raw = tmp_path_factory.mktemp('trials') / 'raw'
    assert prepare_dvs.main(['dvs128-gesture', '--synthetic', '--raw', str(raw), '--per-class', '2',
                             '--no-progress']) == 0
    return raw / 'DvsGesture'


@pytest.mark.parametrize('line', ['../outside/evil.aedat', 'ABSOLUTE'])
def test_a_trials_line_outside_the_raw_folder_is_refused(gesture_raw, tmp_path, capsys, line):
    raw = tmp_path / 'DvsGesture'
    shutil.copytree(gesture_raw, raw)
    outside = tmp_path / 'outside'
    outside.mkdir()
    shutil.copyfile(raw / 'user01_fluorescent.aedat', outside / 'evil.aedat')
    shutil.copyfile(raw / 'user01_fluorescent_labels.csv', outside / 'evil_labels.csv')
    line = str(outside / 'evil.aedat') if line == 'ABSOLUTE' else line
    with open(raw / 'trials_to_train.txt', 'a') as f:
        f.write(f'\n{line}\n')
    root = tmp_path / 'root'
    assert prepare_dvs.main(['dvs128-gesture', '--raw', str(raw), '--root', str(root), '--no-progress']) == 2
    err = capsys.readouterr().err
    assert 'trials_to_train.txt' in err and 'line 3' in err and line in err and 'outside the raw folder' in err, err
    assert sorted(os.listdir(outside)) == ['evil.aedat', 'evil_labels.csv']  # nothing written beside it
    assert not (root / 'events_np').exists()


@pytest.fixture(scope='module')
def moved_checkpoint(tmp_path_factory):
    """A run's checkpoint that records a data_dir that does not exist here and dataset_download: true."""
    root = tmp_path_factory.mktemp('recorded')
    data, _ = tiny_cifar_run(root, epochs=1)
    checkpoint = torch.load(root / 'run' / 'model_best.pth.tar', weights_only=True)
    checkpoint['args'].update(data_dir=str(root / 'nowhere' / 'cifar'), dataset_download=True)
    path = root / 'moved.pth.tar'
    torch.save(checkpoint, path)
    return dict(path=path, nowhere=root / 'nowhere', data=data)


@pytest.fixture
def downloads(monkeypatch):
    """torchvision's CIFAR-10 download, replaced by a recorder (no network here): the roots it was asked for."""
    import torchvision
    asked = []

    def download(root, train=True, download=False, **kwargs):
        asked.append(root)
        raise RuntimeError('a download was attempted')
    download.url, download.filename, download.tgz_md5 = 'https://example.invalid/c.tar.gz', 'c.tar.gz', '0' * 32
    monkeypatch.setattr(torchvision.datasets, 'CIFAR10', download)
    return asked


def _evaluations():
    return {'test.py': evaluate_main, 'energy_report.py': load_script('energy_report').main,
            'spike_report.py': load_script('spike_report').main}


@pytest.mark.parametrize('script', list(_evaluations()))
def test_a_checkpoint_does_not_make_an_evaluation_download(moved_checkpoint, downloads, tmp_path, capsys, script):
    main = _evaluations()[script]
    argv = ['--checkpoint', str(moved_checkpoint['path']), '--output', str(tmp_path / 'out')]
    refused(capsys, main, argv, 'not found', '--data-dir')
    assert downloads == [] and not moved_checkpoint['nowhere'].exists() and not (tmp_path / 'out').exists()
    if script == 'test.py':  # the command line still decides: the flag downloads, --data-dir reads elsewhere
        with pytest.raises(DataError, match='download was attempted'):  # a failed download is a DataError
            main(argv + ['--dataset-download'])
        assert downloads == [str(moved_checkpoint['nowhere'] / 'cifar')]
        results = main(argv + ['--data-dir', str(moved_checkpoint['data'])])
        assert results['samples'] == 40 and Path(tmp_path / 'out' / 'results.json').is_file()
