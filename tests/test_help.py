"""Help that fits the script: ``test.py``, ``scripts/energy_report.py`` and ``scripts/spike_report.py`` list only the
keys an evaluation reads (``utils.config.EVALUATION_KEYS`` and their own), and an evaluation reads no other key."""
import re

import pytest

from helpers import REPO, load_script
from utils import config as config_module
from utils.config import EVALUATION_KEYS, SCHEMA, TEST_KEYS
from utils.training.main import test_main as evaluate_main, train_main


def _listed(main, capsys) -> list:
    with pytest.raises(SystemExit) as e:
        main(['--help'])
    assert e.value.code == 0
    return [m.replace('-', '_') for m in re.findall(r'^  --([a-z0-9-]+) ', capsys.readouterr().out, re.M)]


def test_training_help_lists_every_key(capsys):
    assert _listed(train_main, capsys) == list(SCHEMA)


def test_test_py_help_lists_the_evaluation_keys_only(capsys):
    listed = _listed(evaluate_main, capsys)
    assert listed == [k for k in SCHEMA if k in EVALUATION_KEYS + TEST_KEYS]
    assert not {'lr', 'epochs', 'mixup', 'opt', 'resume', 'seed'} & set(listed)


@pytest.mark.parametrize('script', ['energy_report', 'spike_report'])
def test_report_help_lists_the_evaluation_keys_and_its_own(script, capsys):
    module = load_script(script)
    listed = _listed(module.main, capsys)
    assert listed == [k for k in SCHEMA if k in EVALUATION_KEYS] + list(module.EXTRA_KEYS)
    assert 'limit_batches' in listed and 'lr' not in listed


def test_an_evaluation_reads_only_the_listed_keys(tmp_path, monkeypatch):
    """Every config key that test.py reads is one its --help lists (recorded through ``Config.__getattr__``)."""
    train_main(['--config', str(REPO / 'cifar10' / 'quickstart.yml'), '--epochs', '1', '--limit-train-batches', '1',
                '--limit-eval-batches', '1', '--output', str(tmp_path / 'run')])
    read = set()
    original = config_module.Config.__getattr__

    def spy(self, name):
        read.add(name)
        return original(self, name)
    monkeypatch.setattr(config_module.Config, '__getattr__', spy)
    evaluate_main(['--checkpoint', str(tmp_path / 'run' / 'model_best.pth.tar'), '--output', str(tmp_path / 'eval'),
                   '--limit-eval-batches', '1'])
    listed = set(EVALUATION_KEYS + TEST_KEYS)
    assert read and read <= listed, read - listed
