"""Guards that compare the number they guard (rather than catching a bug by a crash or a message's text).

- float16 loss scaling: a step through a gradient scaler gives the weights of the same step without one (the
  scaled gradients are unscaled exactly, the scale being a power of two), and the gradients the backward pass leaves
  are the scale times the true ones.
- Validation bounds: each bounded key accepts the values at its closed ends and refuses those just past them (and
  at its open ends), as published values need: a bound one step too tight refuses a published value, one too loose
  lets a meaningless one through (``smoothing: 1.0`` leaves no signal in the targets). Refusals are checked by the
  exception's type, never by its text. (The evaluation transforms: tests/test_eval_transforms.py, on the pixels.)
"""
import copy
import math

import pytest
import torch
from torch import nn

from utils.config import ConfigError, load_config
from utils.training.engine import train_loss_fn, train_one_epoch

CPU = torch.device('cpu')
SCALE = 1024.0


def linear_setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    loader = [(torch.randn(4, 3, 2, 2), torch.randint(0, 5, (4,))) for _ in range(3)]
    return model, loader


class GradientRecorder(torch.optim.SGD):
    """SGD that records the gradients it is handed (after the scaler's unscale, when there is one)."""

    def __init__(self, params, **kwargs):
        super().__init__(params, **kwargs)
        self.seen = []

    def step(self, closure=None):
        self.seen.append([p.grad.clone() for group in self.param_groups for p in group['params']])
        return super().step(closure)


def one_epoch(model, loader, scaler=None, grad_accum_steps=1):
    model = copy.deepcopy(model)
    optimizer = GradientRecorder(model.parameters(), lr=0.5)
    backward = []
    hooks = [p.register_hook(lambda g: backward.append(g.clone())) for p in model.parameters()]
    train_one_epoch(model, loader, optimizer, train_loss_fn(None, 0.1), CPU, 0, scaler=scaler,
                    grad_accum_steps=grad_accum_steps, log=lambda line: None)
    for hook in hooks:
        hook.remove()
    return model, optimizer.seen, backward


@pytest.mark.parametrize('grad_accum_steps', [1, 3])
def test_a_scaled_step_is_the_unscaled_step(grad_accum_steps):
    model, loader = linear_setup()
    plain, plain_grads, plain_backward = one_epoch(model, loader, None, grad_accum_steps)
    scaler = torch.amp.GradScaler('cpu', init_scale=SCALE)
    scaler.scale(torch.ones(()))  # primed (the scaler makes its scale lazily): an unscaled loss fails on the numbers
    scaled, scaled_grads, scaled_backward = one_epoch(model, loader, scaler, grad_accum_steps)
    # the backward pass runs on the scaled loss: its gradients are SCALE times the true ones
    assert len(scaled_backward) == len(plain_backward) > 0
    for a, b in zip(scaled_backward, plain_backward):
        torch.testing.assert_close(a, SCALE * b, rtol=1e-6, atol=1e-6)
    # the optimizer receives the true gradients, and makes the same steps
    for step_a, step_b in zip(scaled_grads, plain_grads):
        for a, b in zip(step_a, step_b):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    for a, b, c in zip(scaled.parameters(), plain.parameters(), model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        assert (a - c).abs().max() > 1e-3  # the steps moved the weights


EPS = 1e-9
# key: (values accepted, values refused); the bounds as the published recipes need them
BOUNDS = {
    'smoothing': ([0.0, 0.1, 1 - 1e-6], [1.0, -EPS, 1.5]),          # [0, 1): 1 leaves uniform targets
    'crop_pct': ([1.0, 0.875, EPS], [0.0, 1 + 1e-6, -0.5]),         # (0, 1]: the published 1.0 included
    'hflip': ([0.0, 0.5, 1.0], [-EPS, 1 + 1e-6]),                   # probabilities: [0, 1]
    'reprob': ([0.0, 0.25, 1.0], [-EPS, 1 + 1e-6]),
    'mixup_prob': ([0.0, 1.0], [-EPS, 1 + 1e-6]),
    'mixup_switch_prob': ([0.0, 0.5, 1.0], [-EPS, 1 + 1e-6]),
    'model_ema_decay': ([0.0, 0.9998, 1.0], [-EPS, 1 + 1e-6]),
    'lr': ([EPS, 5e-4, 10.0], [0.0, -EPS, math.nan, math.inf]),     # > 0, finite
    'opt_eps': ([1e-8], [0.0]),
    'weight_decay': ([0.0, 0.06], [-EPS]),                          # >= 0
    'warmup_lr': ([0.0, 1e-6], [-EPS]),
    'min_lr': ([0.0, 1e-5], [-EPS]),
    'mixup': ([0.0, 0.8], [-EPS]),
    'cutmix': ([0.0, 1.0], [-EPS]),
    'color_jitter': ([0.0, 0.4], [-EPS]),
    'time_steps': ([1, 4, 16], [0, -1]),                            # counts: >= 1
    'batch_size': ([1, 64], [0]),
    'epochs': ([1], [0]),
    'grad_accum_steps': ([1, 2], [0]),
    'recount': ([1, 3], [0]),
    'num_classes': ([2, 10, 1000], [1, 0]),                         # a classifier needs two classes
    'workers': ([0, 8], [-1]),                                      # >= 0
    'warmup_epochs': ([0, 20], [-1]),
    'cooldown_epochs': ([0, 10], [-1]),
    'seed': ([0, 42, 2 ** 31 - 1], [-1, 2 ** 31]),                  # numpy's seed range
}
PAIRS = {  # lists of numbers: every element within the bound
    'scale': ([(EPS, 1.0), (0.08, 1.0), (1.0, 1.0)], [(0.0, 1.0), (0.5, 1 + 1e-6)]),  # (0, 1]
    'ratio': ([(EPS, 100.0), (0.75, 4 / 3), (1.0, 1.0)], [(0.0, 1.0), (-1.0, 1.0)]),  # > 0
    'cutmix_minmax': ([(EPS, 1.0), (0.2, 0.8)], [(0.0, 0.5), (0.5, 1 + 1e-6)]),        # (0, 1]
}


def argv_of(name, value):
    flag = '--' + name.replace('_', '-')
    return [flag] + ([repr(float(x)) for x in value] if isinstance(value, tuple) else [repr(value)])


@pytest.mark.parametrize('name', list(BOUNDS) + list(PAIRS))
def test_each_bound_is_exact(name):
    accepted, refused = {**BOUNDS, **PAIRS}[name]
    for value in accepted:
        got = getattr(load_config(argv_of(name, value)), name)
        assert got == (tuple(value) if isinstance(value, tuple) else value), (name, value)
    for value in refused:
        with pytest.raises(ConfigError):
            load_config(argv_of(name, value))


def test_bad_input_exits_with_status_2(capsys):
    """The documented exit status of bad input is the number 2 (scripts and SLURM jobs test it), whatever the
    constant the other tests compare with says."""
    from utils.errors import run_cli
    from utils.training.main import train_main
    with pytest.raises(SystemExit) as e:
        run_cli(train_main, ['--smoothing', '1.0'])
    assert e.value.code == 2 and capsys.readouterr().err.startswith('error: ')
