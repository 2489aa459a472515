"""``estimate_energy``: one evaluation pass that also counts operations (docs/recipe.md section 6)."""
import contextlib
from typing import Dict, Iterable, Optional

import torch
from torch import nn

from .constants import E_AC_PJ, E_MAC_PJ
from .counter import NSPKS_MAX, EnergyCounter
from .report import EnergyReport


def _split(batch):
    if isinstance(batch, (tuple, list)):
        return batch[0], (batch[1] if len(batch) > 1 else None)
    return batch, None


def _correct(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if target.dim() == output.dim():  # soft or one-hot targets
        target = target.argmax(-1)
    return (output.argmax(-1) == target.to(output.device)).sum()


def evaluate_hooked(model: nn.Module, batches: Iterable, hooks, device: Optional[torch.device] = None,
                    autocast_dtype: Optional[torch.dtype] = None) -> Optional[float]:
    """One evaluation pass of ``model`` over ``batches`` inside the context manager ``hooks`` (an
    :class:`energy.hooks.SpikeHooks`); returns top-1 in percent, or ``None`` unless every batch has targets.

    ``batches`` yields ``(input, target)`` pairs (``target`` may be ``None``) or bare inputs: images
    ``[B, C, H, W]`` or event frames ``[B, T, C, H, W]``. Inputs go to ``device`` (default: the model's);
    ``autocast_dtype`` (e.g. ``torch.bfloat16``) runs the pass under autocast. The model runs in eval mode under
    ``no_grad``; its training flag is restored and every hook removed afterwards.
    """
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device('cpu')
    device = torch.device(device)
    was_training = model.training
    model.eval()
    correct, with_targets, seen = None, True, 0
    amp = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
           else contextlib.nullcontext())
    try:
        with hooks, torch.no_grad(), amp:
            for batch in batches:
                x, target = _split(batch)
                if x.shape[0] == 0:  # an empty batch evaluates nothing (and its empty tensors carry no marks)
                    continue
                output = model(x.to(device, non_blocking=True))
                seen += x.shape[0]
                if target is None:
                    with_targets = False
                elif with_targets:
                    hits = _correct(output, target)
                    correct = hits if correct is None else correct + hits
    finally:
        model.train(was_training)
    return 100.0 * correct.item() / seen if with_targets and correct is not None else None


def estimate_energy(model: nn.Module, batches: Iterable, e_mac_pj: float = E_MAC_PJ, e_ac_pj: float = E_AC_PJ,
                    rate_average: str = 'samples', device: Optional[torch.device] = None,
                    autocast_dtype: Optional[torch.dtype] = None, multispike: str = 'mac') -> EnergyReport:
    """Run ``model`` in eval mode over ``batches`` and return the per-sample energy estimate.

    ``batches``, ``device`` and ``autocast_dtype`` are as in :func:`evaluate_hooked`. Top-1 is reported when every
    batch has targets. ``rate_average`` is explained in :class:`EnergyCounter`; ``multispike`` ('mac', the
    published default, or 'ac') is the counting rule for layers whose input is spike counts (:mod:`energy.counter`;
    it changes nothing for a model without them, such as Spikingformer). The model's outputs are those of a plain
    evaluation. For both rules from one pass, use :func:`estimate_energy_rules`.
    """
    return estimate_energy_rules(model, batches, e_mac_pj=e_mac_pj, e_ac_pj=e_ac_pj, rate_average=rate_average,
                                 device=device, autocast_dtype=autocast_dtype, rules=(multispike,))[multispike]


def estimate_energy_rules(model: nn.Module, batches: Iterable, e_mac_pj: float = E_MAC_PJ,
                          e_ac_pj: float = E_AC_PJ, rate_average: str = 'samples',
                          device: Optional[torch.device] = None, autocast_dtype: Optional[torch.dtype] = None,
                          rules=('mac', 'ac')) -> Dict[str, EnergyReport]:
    """:func:`estimate_energy` once per counting rule in ``rules``, from one evaluation pass: ``{rule: report}``."""
    counter = EnergyCounter(model, rate_average=rate_average)
    for rule in rules:
        if rule not in NSPKS_MAX:  # before the pass, not after it
            raise ValueError(f"multispike must be one of {tuple(NSPKS_MAX)}, got {rule!r}")
    top1 = evaluate_hooked(model, batches, counter, device=device, autocast_dtype=autocast_dtype)
    return {rule: counter.report(e_mac_pj=e_mac_pj, e_ac_pj=e_ac_pj, top1=top1, multispike=rule) for rule in rules}
