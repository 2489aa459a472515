"""Config parsing and validation (the published recipes in the YAML files: tests/test_recipe.py)."""
import pytest
import timm
import yaml

import models  # noqa: F401  (registers the models)
from helpers import REPO
from utils.config import SCHEMA, ConfigError, Key, load_config, save_config

SKIP_DIRS = {'.venv', 'output', 'data', '.git', '.ci'}
CONFIGS = sorted(p for p in REPO.rglob('*.yml') if not SKIP_DIRS & set(p.relative_to(REPO).parts))
CIFAR = REPO / 'cifar10' / 'cifar10.yml'


def test_every_repo_config_loads_and_names_a_registered_model():
    assert len(CONFIGS) >= 12
    for path in CONFIGS:
        cfg = load_config([], str(path))
        assert cfg.model in timm.list_models(), path
        assert cfg.dataset in SCHEMA['dataset'].choices


def test_defaults_without_a_file():
    cfg = load_config([])
    assert cfg.to_dict() == {name: (list(k.default) if isinstance(k.default, tuple) else k.default)
                             for name, k in SCHEMA.items()}
    assert cfg.source is None


def test_command_line_overrides_the_file():
    cfg = load_config(['--batch-size', '8', '--val_batch_size=16', '-T', '6', '--mean', '0.1', '0.2', '0.3',
                       '--scale', '0.5,1', '--aa', 'null', '--model-ema', '--amp', 'false', '--lr', '1e-3',
                       '--mixup-off-epoch', 'none', '--output', 'runs/x'], str(CIFAR))
    assert (cfg.batch_size, cfg.val_batch_size, cfg.time_steps) == (8, 16, 6)
    assert cfg.mean == (0.1, 0.2, 0.3) and cfg.scale == (0.5, 1.0)
    assert cfg.aa is None and cfg.model_ema is True and cfg.amp is False
    assert cfg.lr == 1e-3 and isinstance(cfg.lr, float) and cfg.mixup_off_epoch is None
    assert cfg.output == 'runs/x' and cfg.source == str(CIFAR)
    assert load_config(['--no-amp', '--time-steps=3', '--local-rank=1'], str(CIFAR)).to_dict() | {} == \
        load_config(['--amp=false', '--time_steps', '3', '--local_rank', '1'], str(CIFAR)).to_dict()


def test_config_flag_picks_the_file(tmp_path):
    path = tmp_path / 'my.yml'
    path.write_text('epochs: 7\nweight-decay: 0.01\nlr: 5e-4\n')  # PyYAML reads 5e-4 as a string
    cfg = load_config(['--config', str(path)], str(CIFAR))
    assert (cfg.epochs, cfg.weight_decay, cfg.lr, cfg.model) == (7, 0.01, 5e-4, SCHEMA['model'].default)


@pytest.mark.parametrize('argv, words', [
    (['--batch-sise', '8'], ['--batch-sise', '--batch-size']),
    (['--lr'], ['--lr', 'one value']),
    (['--lr', 'fast'], ['lr', 'float', 'fast']),
    (['--epochs', '2.5'], ['epochs', 'int']),
    (['--amp', 'maybe'], ['amp', 'true or false']),
    (['--dataset', 'mnist'], ['mnist', 'cifar10']),
    (['--mean', '0.1', '0.2'], ['mean', '3 numbers']),
    (['--seed', 'null'], ['seed', 'cannot be null']),
    (['stray'], ['stray']),
])
def test_bad_command_line_names_the_culprit(argv, words):
    with pytest.raises(ConfigError) as e:
        load_config(argv, str(CIFAR))
    for word in words:
        assert word in str(e.value)


def test_bad_files_name_the_culprit(tmp_path):
    missing = tmp_path / 'nope.yml'
    with pytest.raises(ConfigError, match='config file not found: .*nope.yml'):
        load_config(['--config', str(missing)])
    typo = tmp_path / 'typo.yml'
    typo.write_text('lr: 0.1\nwarmup_epoch: 3\n')
    with pytest.raises(ConfigError) as e:
        load_config(['--config', str(typo)])
    assert 'warmup_epoch' in str(e.value) and 'warmup_epochs' in str(e.value) and 'typo.yml' in str(e.value)
    broken = tmp_path / 'broken.yml'
    broken.write_text('lr: [0.1\n')
    with pytest.raises(ConfigError, match='not valid YAML'):
        load_config(['--config', str(broken)])


def test_extra_keys_and_base():
    cfg = load_config(['--max-samples', '5'], str(CIFAR), extra_keys={'max_samples': None, 'figure': True,
                                                                         'widths': Key((1.0,), 'floats')})
    assert cfg.max_samples == '5' and cfg.figure is True and cfg.widths == (1.0,)
    cfg = load_config(['--max-samples', '5'], extra_keys={'max_samples': 0})
    assert cfg.max_samples == 5
    with pytest.raises(ConfigError):
        load_config(['--max-samples', '5'], str(CIFAR))
    cfg = load_config(['-T', '2'], str(CIFAR), base={'epochs': 3, 'time_steps': 8})
    assert (cfg.epochs, cfg.time_steps, cfg.source) == (3, 2, None)


def test_saved_config_loads_back(tmp_path):
    cfg = load_config(['--mean', '0.1', '0.2', '0.3', '--aa', 'null'], str(CIFAR))
    save_config(cfg, str(tmp_path / 'args.yaml'))
    again = load_config(['--config', str(tmp_path / 'args.yaml')])
    assert again.to_dict() == cfg.to_dict()
    assert yaml.safe_load((tmp_path / 'args.yaml').read_text())['mean'] == [0.1, 0.2, 0.3]
