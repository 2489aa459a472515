"""Bad input is refused at the start of a run, with one screen naming the culprit and the fix, exit 2, and no run
folder: a YAML key given twice, values of the wrong type (YAML and command line), models this project does not
register or whose input layout does not fit the data set, --aa strings timm would reject or silently skip,
--grad-accum-steps beyond the batches of an epoch, and --dataset-download without a network."""
import pickle
import urllib.error
import urllib.request

import pytest

from helpers import CIFAR10_YML, SCHEDULE, TINY, refused, write_cifar10
from utils.training.main import train_main


@pytest.fixture(scope='module')
def cifar(tmp_path_factory):
    """Synthetic CIFAR-10 pickles: 5 x 16 training images, so 5 batches of TINY's batch size 16 per epoch."""
    return write_cifar10(tmp_path_factory.mktemp('input_validation') / 'cifar')


def _base(cifar):
    return ['--config', CIFAR10_YML, '--data-dir', str(cifar)] + TINY + SCHEDULE + ['--epochs', '1']


def test_a_yaml_key_given_twice_names_the_key_and_both_lines(tmp_path, capsys):
    config = tmp_path / 'twice.yml'
    config.write_text('dataset: cifar10\nlr: 0.001\nepochs: 3\nlr: 0.1\n')
    refused(capsys, train_main, ['--config', str(config), '--output', str(tmp_path / 'run')],
            str(config), "'lr' is given twice", 'line 2', 'line 4')
    nested = tmp_path / 'nested.yml'  # any mapping of the file, at any depth
    nested.write_text('dataset: cifar10\nmean: [0.5, 0.5, 0.5]\nstd: {a: 1, a: 2}\n')
    refused(capsys, train_main, ['--config', str(nested)], "'a' is given twice", 'line 3')
    spellings = tmp_path / 'spellings.yml'  # two spellings of one key: different to YAML, one key to the schema
    spellings.write_text('dataset: cifar10\nbatch-size: 8\nbatch_size: 16\n')
    refused(capsys, train_main, ['--config', str(spellings)], "'batch_size' is given twice", "'batch-size'")
    assert not (tmp_path / 'run').exists()


@pytest.mark.parametrize('line, key', [('batch_size: [64]', 'batch_size'), ('mean: [[0.5], 0.5, 0.5]', 'mean'),
                                       ('lr: {peak: 0.1}', 'lr'), ('model: [spikingformer_cifar_4_384]', 'model'),
                                       ('seed: .inf', 'seed'), ('aa: [rand]', 'aa')])
def test_wrong_types_in_a_yaml_file(tmp_path, capsys, line, key):
    config = tmp_path / 'types.yml'
    config.write_text(f'dataset: cifar10\n{line}\n')
    refused(capsys, train_main, ['--config', str(config), '--output', str(tmp_path / 'run')], repr(key), str(config))
    assert not (tmp_path / 'run').exists()


def test_a_non_utf8_config_file(tmp_path, capsys):
    config = tmp_path / 'latin1.yml'
    config.write_bytes('dataset: cifar10\n# r\xe9sum\xe9\n'.encode('latin-1'))
    refused(capsys, train_main, ['--config', str(config)], str(config), 'UTF-8')


@pytest.mark.parametrize('model, words', [
    ('resnet18', ('a timm model', 'spikingformer_cifar_4_384')),
    ('spikingformer_cifar_4_385', ("unknown model 'spikingformer_cifar_4_385'", 'spikingformer_cifar_4_384')),
    ('spikingformer_dvs_2_256', ('event frames with 2 channels', 'images with 3 channels',
                                 'spikingformer_cifar_4_384'))])
def test_models_this_project_cannot_train_on_the_data_are_refused_before_the_run_folder(cifar, tmp_path, capsys,
                                                                                          model, words):
    out = tmp_path / 'run'
    refused(capsys, train_main, _base(cifar) + ['--model', model, '--output', str(out)], *words)
    assert not out.exists()


def test_an_image_model_on_event_data_is_refused(tmp_path, capsys):
    out = tmp_path / 'run'
    refused(capsys, train_main, ['--dataset', 'dvs128-gesture', '--model', 'spikingformer_cifar_4_384',
                                 '--data-dir', str(tmp_path / 'no-data'), '--output', str(out)],
            "data set 'dvs128-gesture' gives event frames", 'spikingformer_dvs_2_256')
    assert not out.exists()


@pytest.mark.parametrize('policy, words', [('rand-m9-q3', ('timm cannot parse it',)), ('foo', ('Unknown AA policy',)),
                                           ('rand-mX-n1', ("'mX'", 'skip them silently')),
                                           ('rand-m9-', ("''", 'skip them silently')),
                                           ('augmix-zz', ("'zz'",))])
def test_invalid_aa_policies_are_refused_before_any_data_is_read(tmp_path, capsys, policy, words):
    out = tmp_path / 'run'
    refused(capsys, train_main, ['--config', CIFAR10_YML, '--data-dir', str(tmp_path / 'absent'), '--aa', policy,
                                 '--output', str(out)], "'aa'", repr(policy), *words)
    assert not out.exists()


def test_grad_accum_steps_beyond_the_batches_of_an_epoch(cifar, tmp_path, capsys):
    out = tmp_path / 'run'
    refused(capsys, train_main, _base(cifar) + ['--grad-accum-steps', '6', '--output', str(out)],
            'grad_accum_steps is 6', 'only 5 batch(es)', '16 x 1 x 6 = 96', '--grad-accum-steps 5 or less')
    refused(capsys, train_main, _base(cifar) + ['--grad-accum-steps', '3', '--limit-train-batches', '2',
                                                '--output', str(out)],
            'only 2 batch(es)', 'limit_train_batches 2', 'a larger --limit-train-batches')
    assert not out.exists()


def test_dataset_download_without_a_network(tmp_path, capsys, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError('[Errno -3] Temporary failure in name resolution')
    monkeypatch.setattr(urllib.request, 'urlopen', offline)
    data, out = tmp_path / 'new' / 'cifar', tmp_path / 'run'
    refused(capsys, train_main, ['--config', CIFAR10_YML, '--data-dir', str(data), '--dataset-download',
                                 '--output', str(out)] + TINY,
            'cannot download CIFAR-10', 'cifar-10-python.tar.gz', 'name resolution', 'without --dataset-download')
    assert not out.exists() and not (tmp_path / 'new').exists()  # nothing left behind


def test_a_cifar_batch_with_more_labels_than_images(tmp_path, capsys):
    data = write_cifar10(tmp_path / 'cifar')
    batch = data / 'cifar-10-batches-py' / 'data_batch_2'
    entry = pickle.loads(batch.read_bytes())
    batch.write_bytes(pickle.dumps({**entry, 'labels': entry['labels'] + [1, 2, 3]}))
    refused(capsys, train_main, _base(data) + ['--output', str(tmp_path / 'run')], str(batch),
            'holds 16 images but 19 labels')
    assert not (tmp_path / 'run').exists()
